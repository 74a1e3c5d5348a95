"""One bot process runs every gateway shard (discord.py's AutoShardedBot): servers on any shard share the
one job store, fair queue and engine."""

from tests.helpers import JOB_ID, discord_world


async def test_servers_on_two_shards_are_served_by_one_process(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path, discord={"shards": 2}) as world:
        assert world.bot.shard_count == 2 and sorted(world.bot.shards) == [0, 1]
        channels, job_ids = [], []
        for shard_id, name in enumerate(("carol", "dave")):
            guild = world.env.create_guild(f"Server {shard_id}", shard_id=shard_id)
            channel = guild.create_text_channel("art")
            member = guild.add_member(world.env.create_user(name))
            assert world.bot.get_guild(guild.id).shard_id == shard_id
            result = await member.slash(channel, "imagine", prompt=f"a cat for {name}", seed=1, steps=1)
            match = JOB_ID.search(result.response.content)
            assert match, result.response.content
            channels.append(channel)
            job_ids.append(match.group(1))
        for channel, job_id in zip(channels, job_ids, strict=True):
            job = await world.wait_job(job_id)
            assert job.state == "done", job.error
            posted = [m for m in channel.history() if m.author.bot and m.attachments]
            assert len(posted) == 1 and f"zimage-{job_id}." in posted[0].attachments[0].filename
