"""/forget and /config purge-user delete everything else the bot keeps about a member: their /settings
row and the reports they made; other members' settings and reports are untouched, and a purge on
one server leaves the member's reports on other servers."""

from __future__ import annotations

from bot.store import JobExtras, JobRecord, JobState
from engine.jobspec import JobSpec
from tests.helpers import discord_world


async def settings_rows(store, user_id: int) -> int:
    async with store.db.execute("SELECT COUNT(*) FROM user_settings WHERE user_id = ?", (user_id,)) as cursor:
        return (await cursor.fetchone())[0]


async def reports_by(store, user_id: int) -> list[str]:
    async with store.db.execute("SELECT job_id FROM reports WHERE user_id = ? ORDER BY job_id", (user_id,)) as cursor:
        return [row[0] for row in await cursor.fetchall()]


async def posted_result(world, member, prompt: str):
    _, job_id = await world.imagine(member, prompt=prompt, seed=1, steps=2)
    job = await world.wait_job(job_id)
    assert job.state == "done", job.error
    return job, [m for m in world.channel.history() if m.id == job.result_message_id][0]


async def reported_setup(world):
    """Alice and Bob each have /settings, a result, and a report of the other's result."""
    mods = world.guild.create_text_channel("mods")
    await world.mod.slash(world.channel, "config set", setting="report_channel", value=mods.mention)
    assert (await world.alice.slash(world.channel, "settings set", count=2)).ephemeral
    await world.bob.slash(world.channel, "settings set", model="base")
    mine, my_message = await posted_result(world, world.alice, "a cat")
    theirs, their_message = await posted_result(world, world.bob, "a dog")
    assert "moderators have been told" in (await world.alice.click(their_message, label="Report")).response.content
    assert "moderators have been told" in (await world.bob.click(my_message, label="Report")).response.content
    store = world.bot.store
    assert await reports_by(store, world.alice.id) == [theirs.id] and await reports_by(store, world.bob.id) == [mine.id]
    assert await settings_rows(store, world.alice.id) == 1 and await settings_rows(store, world.bob.id) == 1
    return mine, theirs


async def test_forget_deletes_the_members_settings_and_reports_too(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        mine, theirs = await reported_setup(world)
        store = world.bot.store
        asked = await world.alice.slash(world.channel, "forget")
        done = await world.alice.click(asked.response.message, label="Delete everything")
        said = done.response.content
        assert "Deleted 1 job(s) of yours" in said and "also 1 report(s) made and the /settings defaults" in said
        assert await store.get_job(mine.id) is None
        assert await reports_by(store, world.alice.id) == []  # hers, of Bob's result
        assert await reports_by(store, world.bob.id) == []  # his, of her deleted result: gone with it
        assert await settings_rows(store, world.alice.id) == 0
        assert (await world.bot.user_settings.get(world.alice.id)).count is None  # not served from a cache
        # Bob keeps everything of his.
        assert await store.get_job(theirs.id) is not None and await settings_rows(store, world.bob.id) == 1
        assert (await world.bot.user_settings.get(world.bob.id)).model == "base"

        await world.restart()  # what is gone stays gone
        shown = await world.alice.slash(world.channel, "settings view")
        assert {f.name: f.value for f in shown.response.embeds[0].fields}["Count"] == "1"


async def test_purge_user_deletes_settings_and_the_reports_made_on_this_server(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        mine, theirs = await reported_setup(world)
        store = world.bot.store
        # Elsewhere: a job on another server that Alice reported there.
        spec = JobSpec(prompt="a boat", width=64, height=64, steps=2, seed=1)
        other = JobRecord("0e0e0e0e0e", 999, 998, world.bob.id, spec, JobExtras(), state=JobState.DONE)
        await store.add_job(other)
        assert await store.add_report(other.id, world.alice.id)

        purged = await world.mod.slash(world.channel, "config purge-user", member=world.alice)
        said = purged.response.content
        assert purged.ephemeral and "Deleted 1 job(s) of <@" in said and "1 report(s) made" in said
        assert await reports_by(store, world.alice.id) == [other.id]  # the other server's report is theirs
        assert await settings_rows(store, world.alice.id) == 0
        assert await store.get_job(theirs.id) is not None and await reports_by(store, world.bob.id) == []
        assert await settings_rows(store, world.bob.id) == 1


async def test_forget_with_nothing_stored_says_so_plainly(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        asked = await world.bob.slash(world.channel, "forget")
        done = await world.bob.click(asked.response.message, label="Delete everything")
        assert done.response.content == "Deleted 0 job(s) of yours with their prompts, attached images and results."
