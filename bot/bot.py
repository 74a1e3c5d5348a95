"""ZImageBot: the commands.Bot subclass, and `create_bot(config)` that builds it without connecting."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Config
from bot.engine_client import EngineClient
from bot.jobs import ExternalWait, JobService
from bot.orphans import CHANNEL_DELETED, GUILD_LEFT, cancel_jobs_where
from bot.policy import DMS_OFF, Policy
from bot.privacy import Retention
from bot.settings import GuildSettings
from bot.store import JobStore
from bot.styles import StyleBook
from bot.user_settings import UserSettings
from bot.views import DYNAMIC_ITEMS

log = logging.getLogger("bot")

INITIAL_EXTENSIONS = (
    "cogs.imagine", "cogs.control", "cogs.upscale", "cogs.inpaint", "cogs.admin", "cogs.settings", "cogs.queue",
    "cogs.privacy",
)  # fmt: skip


class ZImageTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """A DM reaching a guild-only install (an old client, a cached command): a clear refusal."""
        config: Config = interaction.client.config  # type: ignore[attr-defined]
        if interaction.guild_id is not None or config.discord.dms == "on":
            return True
        if interaction.type == discord.InteractionType.application_command:
            await interaction.response.send_message(DMS_OFF, ephemeral=True)
        return False


class ZImageBot(commands.AutoShardedBot):
    """One process for every shard: the job store, the fair queue and the engines are shared by all of them
    (a small bot gets one shard, as with commands.Bot)."""

    def __init__(self, config: Config, store: JobStore, engine: EngineClient, external_wait: ExternalWait | None):
        intents = discord.Intents.default()  # slash commands and buttons need no privileged intents
        super().__init__(
            shard_count=config.discord.shards or None,  # None: Discord's recommendation (GET /gateway/bot)
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            # No stray pings: nothing a message says pings anyone unless that send allows it (only the
            # result's mention of its requester does).
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=ZImageTree,
            # dms = "off": the commands are installed for servers only; "on" adds the bot's DMs.
            allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=config.discord.dms == "on"),
            allowed_installs=app_commands.AppInstallationType(guild=True, user=False),
        )
        self.config = config
        self.store = store
        self.engine = engine
        self.clock = time.time  # one clock for job records and quotas; tests move it
        self.jobs = JobService(self, store, engine, config, external_wait=external_wait, clock=lambda: self.clock())
        self.jobs.delivery.external_wait = self.jobs.external_wait  # retry waits, declared as the dispatcher's
        self._swept = False
        self.guild_settings = GuildSettings(store, config)
        self.user_settings = UserSettings(store)
        self.styles = StyleBook(store)
        self.policy = Policy(self.guild_settings, clock=lambda: self.clock())
        self.retention = Retention(store, config.storage.keep_days, clock=lambda: self.clock())
        self.tree.error(self.on_app_command_error)

    async def setup_hook(self) -> None:
        if not self.store.is_open:
            await self.store.open()
        for extension in INITIAL_EXTENSIONS:
            try:
                await self.load_extension(extension)
            except Exception:
                log.exception("failed to load extension %s", extension)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        if self.engine.process is None:
            await self.engine.start()  # returns at once; models load in the engine process meanwhile
        await self.jobs.recover()
        self.jobs.start()
        self.retention.start(sleep=lambda seconds: self.jobs.external_wait(asyncio.sleep(seconds), "retention"))
        await self.sync_commands_if_changed()

    async def close(self) -> None:
        await self.retention.stop()
        await self.jobs.stop()
        await self.jobs.delivery.stop()
        await super().close()

    async def on_ready(self) -> None:
        if not self._swept:  # once per process: results a stop interrupted, status messages left behind
            self._swept = True
            await self.jobs.delivery.sweep()

    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        await cancel_jobs_where(self, CHANNEL_DELETED, channel_id=channel.id)

    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        await cancel_jobs_where(self, CHANNEL_DELETED, channel_id=payload.thread_id)

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        await cancel_jobs_where(self, GUILD_LEFT, guild_id=guild.id)

    async def sync_commands_if_changed(self) -> bool:
        """Sync only when the command set changed: Discord caps command creates per day."""
        guild = discord.Object(self.config.discord.dev_guild_id) if self.config.discord.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        commands_json = json.dumps([c.to_dict(self.tree) for c in self.tree.get_commands(guild=guild)], sort_keys=True)
        digest = hashlib.sha256(f"{guild and guild.id}:{commands_json}".encode()).hexdigest()
        marker = self.store.data_dir / "commands.sha256"
        if marker.exists() and marker.read_text() == digest:
            return False
        await self.tree.sync(guild=guild)
        marker.write_text(digest)
        log.info(
            "synced %s application commands %s", len(self.tree.get_commands(guild=guild)), guild and "to dev guild"
        )
        return True

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError):
        if isinstance(error, app_commands.CheckFailure):
            message = str(error) or "You can't use this command here."
        else:
            log.error("command %s failed", interaction.command and interaction.command.name, exc_info=error)
            message = "Something went wrong on our side; the operator can find it in the bot's log."
        send = interaction.followup.send if interaction.response.is_done() else interaction.response.send_message
        try:
            await send(message, ephemeral=True)
        except discord.HTTPException:
            pass


def create_bot(
    config: Config,
    *,
    store: JobStore | None = None,
    engine: EngineClient | None = None,
    external_wait: ExternalWait | None = None,
) -> ZImageBot:
    """Build the whole bot without connecting. The caller owns (and closes) store and engine."""
    store = store or JobStore(config.data_path)
    return ZImageBot(config, store, engine or engine_client_for(config), external_wait)


def engine_client_for(config: Config) -> EngineClient:
    """The engine process as config.toml describes it (started later, by setup_hook); with [queue] backend =
    "redis", GPU workers through Redis (bot/remote_engine.py), whose URL $ZIMAGE_REDIS_URL may override so a
    password stays out of config.toml."""
    if config.queue.backend == "redis":
        import os

        from bot.remote_engine import RemoteEngine

        queue = config.queue
        url = os.environ.get("ZIMAGE_REDIS_URL") or queue.redis_url
        remote = RemoteEngine(url, prefix=queue.redis_prefix, lease_s=queue.lease_s, blob_dir=queue.blob_dir)
        return cast(EngineClient, remote)  # the same interface the dispatcher uses, not a subclass
    devices = config.engine.devices
    if len(devices) == 1:
        return EngineClient(config.engine_options(), watchdog=config.watchdog())
    from bot.engine_pool import EnginePool

    names = [device if devices.count(device) == 1 else f"{device} #{i}" for i, device in enumerate(devices, 1)]
    clients = [
        EngineClient(config.engine_options(device), name=name, watchdog=config.watchdog())
        for device, name in zip(devices, names, strict=True)
    ]
    return cast(EngineClient, EnginePool(clients, names))
