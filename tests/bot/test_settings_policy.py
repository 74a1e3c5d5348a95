"""GuildSettings and Policy without Discord or an engine: real SQLite, a fake clock, and a plain
stand-in for the interaction (the only Discord object Policy reads)."""

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from bot.config import parse_config
from bot.errors import Refused
from bot.policy import Policy
from bot.settings import SETTINGS, GuildSettings, SettingError, describe, parse_value
from bot.store import JobExtras, JobRecord, JobStore
from engine.jobspec import JobKind, JobSpec, Limits, ModelName, resolve

GUILD = 1
CONFIG = parse_config({"engine": {"models": "tiny"}})


@dataclass
class Permissions:
    view_channel: bool = True
    send_messages: bool = True
    send_messages_in_threads: bool = True
    attach_files: bool = True
    embed_links: bool = True


@dataclass
class User:
    id: int = 7
    roles: list = field(default_factory=list)


@dataclass
class Interaction:
    guild_id: int | None = GUILD
    channel_id: int = 10
    user: User = field(default_factory=User)
    app_permissions: Permissions = field(default_factory=Permissions)
    channel: object = None


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def stored(tmp_path):
    store = await JobStore(tmp_path).open()
    settings = GuildSettings(store, CONFIG)
    return store, settings


def test_values_parse_as_typed_and_show_back_the_same_way():
    assert parse_value(SETTINGS["spoiler"], "on", CONFIG) is True
    assert describe(SETTINGS["spoiler"], True) == "on"
    words = parse_value(SETTINGS["blocked_words"], "Castle, @everyone", CONFIG)
    assert describe(SETTINGS["blocked_words"], words) == "@everyone, castle"
    assert parse_value(SETTINGS["commands"], "/upscale imagine", CONFIG) == ["imagine", "upscale"]
    with pytest.raises(SettingError, match="ceiling for max_steps_turbo is 50"):
        parse_value(SETTINGS["max_steps_turbo"], "60", CONFIG)
    with pytest.raises(SettingError, match="needs a whole number"):
        parse_value(SETTINGS["cooldown"], "soon", CONFIG)


async def test_settings_are_per_guild_capped_and_survive_a_new_cache(tmp_path):
    store, settings = await stored(tmp_path)
    await settings.set(GUILD, "max_steps_base", "20", user_id=7)
    await settings.set(GUILD, "default_model", "base", user_id=7)
    assert await settings.get(GUILD, "max_steps_base") == 20
    assert await settings.get(2, "max_steps_base") == 100  # another guild: the operator's ceiling
    assert await GuildSettings(store, CONFIG).get(GUILD, "default_model") == "base"  # from SQLite
    await settings.reset(GUILD, "default_model", user_id=7)
    assert await settings.get(GUILD, "default_model") == "turbo"
    history = await store.settings_history(GUILD)
    assert [(h["key"], h["new_value"]) for h in history] == [
        ("default_model", None), ("default_model", "base"), ("max_steps_base", 20)
    ]  # fmt: skip
    await store.close()


async def test_policy_fills_the_guild_defaults_and_applies_its_caps(tmp_path):
    store, settings = await stored(tmp_path)
    policy = Policy(settings, clock=Clock(1000.0))
    spec = JobSpec(prompt="a cat", width=64, height=64)
    admitted = await policy.check(Interaction(), "imagine", spec)
    assert (admitted.spec.model, admitted.spec.steps, admitted.spoiler) == (ModelName.TURBO, 8, False)
    await settings.set(GUILD, "default_model", "base", 7)
    await settings.set(GUILD, "max_steps_base", "12", 7)
    await settings.set(GUILD, "spoiler", "on", 7)
    admitted = await policy.check(Interaction(), "imagine", spec)
    assert (admitted.spec.model, admitted.spec.steps, admitted.spoiler) == (ModelName.BASE, 12, True)
    with pytest.raises(Refused, match="at most 12 steps for base"):
        await policy.check(Interaction(), "imagine", JobSpec(prompt="a cat", steps=13))
    await settings.set(GUILD, "commands", "imagine", 7)
    with pytest.raises(Refused, match="/control is turned off"):
        await policy.check(Interaction(), "control", spec)
    with pytest.raises(Refused, match="missing Attach Files"):
        await policy.check(Interaction(app_permissions=Permissions(attach_files=False)), "imagine", spec)
    await store.close()


async def test_quota_and_cooldown_follow_the_clock_across_utc_midnight(tmp_path):
    store, settings = await stored(tmp_path)
    late = datetime(2026, 12, 1, 23, 59, 50, tzinfo=UTC).timestamp()
    clock = Clock(late)
    policy = Policy(settings, clock=clock)
    await settings.set(GUILD, "daily_quota", "3", 7)
    await settings.set(GUILD, "cooldown", "30", 7)
    spec = resolve(JobSpec(prompt="a cat", width=64, height=64, count=2), Limits.for_models("tiny"))
    await store.add_job(JobRecord("q1", GUILD, 10, 7, spec, JobExtras(), created_at=late - 60))
    with pytest.raises(Refused, match="used 2 of your 3 images today"):
        await policy.check(Interaction(), "imagine", spec)
    clock.now = late + 20  # 00:00:10 the next day: the quota reset, the cooldown since q2 has not passed
    await store.add_job(JobRecord("q2", GUILD, 10, 7, spec, JobExtras(), created_at=late + 15))
    with pytest.raises(Refused, match="Slow down: you can ask again"):
        await policy.check(Interaction(), "imagine", spec)
    clock.now = late + 50
    with pytest.raises(Refused, match="used 2 of your 3 images today"):
        await policy.check(Interaction(), "imagine", spec)  # q2 counts on the new day
    one = JobSpec(prompt="a cat", width=64, height=64)
    assert (await policy.check(Interaction(), "imagine", one)).spec.count == 1
    await store.close()


async def test_upscales_skip_image_caps_and_the_blocklist_reads_the_spec(tmp_path):
    store, settings = await stored(tmp_path)
    policy = Policy(settings)
    await settings.set(GUILD, "max_megapixels", "0.01", 7)
    await settings.set(GUILD, "blocked_words", "castle", 7)
    upscale = JobSpec(kind=JobKind.UPSCALE, input_width=20, input_height=20)
    assert (await policy.check(Interaction(), "upscale", upscale)).spec == upscale  # the engine checks size
    with pytest.raises(Refused, match="up to 0.01 MP"):
        await policy.check(Interaction(), "imagine", JobSpec(prompt="a cat", width=1024, height=1024))
    with pytest.raises(Refused):
        await policy.check(Interaction(), "imagine", JobSpec(prompt="a Castle", width=64, height=64))
    await store.close()
