"""An offline Discord (simcord) around the real bot, with the real tiny engine process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

import simcord

from bot import create_bot
from bot.config import parse_config
from bot.store import JobStore

JOB_ID = re.compile(r"job `([0-9a-f]+)`")
# The LoRA folder of the test engine process (conftest sets the cache folder; `tiny_loras` fills it).
LORA_DIR = str(Path(os.environ["ZIMAGE_BOT_CACHE"]) / "loras")


def tiny_config(data_dir: Path, **sections):
    raw = {
        "engine": {"models": "tiny", "device": "cpu", "lora_dir": LORA_DIR},
        "storage": {"data_dir": str(data_dir)},
        "imagine": {"target_pixels": 64 * 64, "progress_interval": 0.01, "preview_every": 1},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return parse_config(raw)


class World:
    """One simcord world: a guild, a channel, three members; the bot can be restarted in it."""

    def __init__(self, env: simcord.Env, config, engine):
        self.env = env
        self.config = config
        self.engine = engine
        self.stores: list[JobStore] = []
        self.guild = env.create_guild()
        self.channel = self.guild.create_text_channel("art")
        self.alice = self.guild.add_member(env.create_user("alice"))
        self.bob = self.guild.add_member(env.create_user("bob"))
        import discord

        mods = self.guild.create_role("Mods", permissions=discord.Permissions(manage_messages=True, manage_guild=True))
        self.mod = self.guild.add_member(env.create_user("mod"), roles=[mods])

    @property
    def bot(self):
        return self.env.bot

    async def new_bot(self):
        store = await JobStore(self.config.data_path).open()
        self.stores.append(store)
        return create_bot(self.config, store=store, engine=self.engine, external_wait=self.external_wait)

    async def external_wait(self, awaitable, reason):
        return await self.env.external_wait(awaitable, reason=reason)

    async def restart(self):
        """A new bot process on the same database and the same Discord."""
        old = self.bot
        await old.jobs.stop()
        await self.env.restart_bot(await self.new_bot())

    async def wait_job(self, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 90):
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = await self.bot.store.get_job(job_id)
            if job is not None and job.state in states:
                await self.env.settle()
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"job {job_id} still {job and job.state} after {timeout} s")
            await asyncio.sleep(0.05)

    async def imagine(self, member, **options):
        """Run /imagine; returns (interaction result, job id or None)."""
        result = await member.slash(self.channel, "imagine", **options)
        return result, self.job_id(result)

    def job_id(self, result) -> str | None:
        """The job an interaction queued. Its status message is deleted once the result is out (or
        edited to say it failed), which a fast job can do before the interaction returns: then the
        latest job id the bot sent."""
        if result.response is not None and (match := JOB_ID.search(result.response.content)):
            return match.group(1)
        if result.response is not None and result.ephemeral:
            return None  # refused: nothing was queued
        found = JOB_ID.findall("\n".join(self.contents_sent()))
        return found[-1] if found else None

    def contents_sent(self) -> list[str]:
        """Every message content the bot sent or edited, in order (Discord keeps only the latest)."""
        found = []

        def walk(value):
            if isinstance(value, dict):
                if isinstance(value.get("content"), str):
                    found.append(value["content"])
                for item in value.values():
                    walk(item)

        for request in self.env.http_requests:
            walk(request.json)
        return found

    def bot_messages(self):
        return [m for m in self.channel.history() if m.author.bot]


@contextlib.asynccontextmanager
async def discord_world(engine, data_dir: Path, **sections):
    config = tiny_config(data_dir, **sections)
    holder = {}

    async def external_wait(awaitable, reason):
        return await holder["env"].external_wait(awaitable, reason=reason)

    store = await JobStore(config.data_path).open()
    bot = create_bot(config, store=store, engine=engine, external_wait=external_wait)
    env = holder["env"] = simcord.Env(bot)
    await env.start()
    world = World(env, config, engine)
    world.stores.append(store)
    try:
        yield world
    finally:
        with contextlib.suppress(Exception):
            await world.bot.jobs.stop()
        await env.shutdown()
        for opened in world.stores:
            await opened.close()
