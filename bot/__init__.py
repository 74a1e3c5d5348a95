"""The Discord side: never imports torch or diffsynth; shares only engine/protocol.py with the engine."""

from bot.bot import ZImageBot, create_bot
from bot.config import Config, load_config

__all__ = ["Config", "ZImageBot", "create_bot", "load_config"]
