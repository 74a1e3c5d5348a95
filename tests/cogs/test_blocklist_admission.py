"""A guild's blocklist at its caps cannot freeze /imagine: 100 patterns of the maximum length, set
through the settings' own parser and validation, and prompt and negative prompt of the longest length
/imagine takes, are admitted with the event loop busy under 50 ms of CPU at a stretch, and a prompt one
of them matches is refused."""

from __future__ import annotations

import random
import time

from bot.prompt_filter import MAX_PATTERN_LENGTH, MAX_PATTERNS
from tests.bot.test_prompt_filter import max_length_patterns
from tests.helpers import LoopLagProbe, discord_world

MAX_BUSY_MS = 50
MAX_PROMPT = 2000  # /imagine refuses longer prompts before the blocklist


async def test_imagine_admission_with_a_hundred_maximum_length_patterns_stays_under_50_ms(engine_client, tmp_path):
    rng = random.Random(16)
    patterns = max_length_patterns(rng)
    assert len(patterns) == MAX_PATTERNS and {len(p) for p in patterns} == {MAX_PATTERN_LENGTH}
    vocabulary = "a cat on a windowsill at sunset oil painting highly detailed warm light bokeh portrait".split()
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()  # admission only: nothing reaches the engine
        stored = await world.bot.guild_settings.set(
            world.guild.id, "blocked_patterns", "\n".join(patterns), world.mod.id
        )
        assert stored == patterns
        busy, walls = [], []
        for _ in range(3):
            prompt = " ".join(rng.choices(vocabulary, k=400))[:MAX_PROMPT]
            start = time.perf_counter()
            async with LoopLagProbe() as probe:
                result, job_id = await world.imagine(world.alice, prompt=prompt, negative=prompt[::-1])
            walls.append(time.perf_counter() - start)
            busy.append(probe.max_busy_ms)
            assert job_id is not None and not result.ephemeral, result.response.content  # checked in full: admitted
        assert max(busy) < MAX_BUSY_MS, f"loop busy {max(busy):.1f} ms at a stretch (wall {max(walls) * 1000:.0f} ms)"

        words = patterns[3].replace("[ _-]?", " ")  # shape 3: words joined by an optional separator
        refused, _ = await world.imagine(world.alice, prompt=f"a poster saying {words}")
        assert refused.ephemeral and "matches a pattern this server blocks" in refused.response.content
        world.bot.jobs.resume()
