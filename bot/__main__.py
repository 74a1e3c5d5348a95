"""`python -m bot [--config config.toml]`: the launcher. It owns the lifetimes of the database
and the engine process, fetches real weights on first run, and turns a bad token into one line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys

import aiohttp
import discord

from bot.bot import create_bot, engine_client_for
from bot.config import ConfigError, load_config
from bot.store import JobStore

log = logging.getLogger("bot")


def fetch_weights_if_missing(controlnet_file: str = "") -> bool:
    """Run `python -m engine download --if-missing` (progress bars on the terminal)."""
    command = [sys.executable, "-m", "engine", "download", "--if-missing"]
    if controlnet_file:
        command += ["--controlnet-file", controlnet_file]
    return subprocess.run(command, check=False).returncode == 0


async def run(config, token: str) -> None:
    async with JobStore(config.data_path) as store:
        engine = engine_client_for(config)
        bot = create_bot(config, store=store, engine=engine)
        try:
            async with bot:
                await bot.start(token)
        finally:
            await engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="The Z-Image Discord bot.")
    parser.add_argument("--config", default="config.toml", help="path to config.toml (default: ./config.toml)")
    args = parser.parse_args(argv)
    discord.utils.setup_logging(level=logging.INFO)
    try:
        config = load_config(args.config if os.path.exists(args.config) or args.config != "config.toml" else None)
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not token:
        print("DISCORD_TOKEN is not set: export the bot token from the Discord developer portal.", file=sys.stderr)
        return 2
    if (
        config.engine.models == "zimage"
        and config.engine.download_on_start
        and not fetch_weights_if_missing(config.engine.controlnet_file)
    ):
        print('The model weights could not be fetched (see above). Fix that, or set [engine] models = "tiny".')
        return 3
    try:
        asyncio.run(run(config, token))
    except discord.LoginFailure:
        print("Discord rejected DISCORD_TOKEN: copy a fresh token from the developer portal (Bot > Reset Token).")
        return 2
    except (aiohttp.ClientConnectionError, OSError) as exc:  # DNS, refused, no route: say it in one line
        print(f"Cannot reach Discord ({type(exc).__name__}: {exc}); check this machine's network.", file=sys.stderr)
        return 4
    except discord.PrivilegedIntentsRequired:
        print("Discord refused the gateway intents this bot asked for.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
