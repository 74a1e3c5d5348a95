"""ETAs are priced for the engine that runs the job, and the last run's figures survive a restart."""

import pytest

from bot.eta import DurationEstimator, job_cost, load_speed_figures, save_speed_figure, speed_profile
from bot.store import JobStore
from engine.jobspec import JobSpec, Limits
from engine.protocol import Ready
from tests.helpers import discord_world


def ready(device: str, weights: str = "zimage") -> Ready:
    return Ready(device, weights, Limits())


def test_the_profile_is_the_weights_and_the_kind_of_device():
    assert speed_profile(ready("cuda:1")) == "zimage@cuda"
    assert speed_profile(ready("cpu", "tiny")) == "tiny@cpu"


def test_the_prior_follows_the_device_the_engine_reported():
    estimator = DurationEstimator()
    on_gpu = estimator.estimate("txt2img", 1.0)
    estimator.follow(ready("cpu"))  # the real weights in float32 on a CPU: minutes, not a second
    assert estimator.estimate("txt2img", 1.0) > 100 * on_gpu
    estimator.follow(None)  # no engine ready (restarting): keep pricing for the last one
    assert estimator.profile == "zimage@cpu"
    estimator.follow(ready("cuda:0"))
    assert estimator.estimate("txt2img", 1.0) == pytest.approx(on_gpu)
    assert estimator.estimate("zoom", 1.0) == pytest.approx(estimator.estimate("control", 1.0))  # ControlNet kinds


def test_the_first_measurement_replaces_the_prior_then_an_average_moves():
    estimator = DurationEstimator()
    estimator.follow(ready("cuda:0"))
    assert estimator.record("txt2img", cost=2.0, seconds=20.0) == pytest.approx(10.0)
    assert estimator.estimate("txt2img", 1.0) == pytest.approx(10.0)
    estimator.record("txt2img", cost=1.0, seconds=20.0)
    assert estimator.estimate("txt2img", 1.0) == pytest.approx(10.0 + 0.3 * 10.0)
    assert estimator.record("txt2img", cost=0.0, seconds=5.0) is None  # says nothing about speed
    estimator.follow(ready("cpu", "tiny"))  # another machine's figures never price this one
    assert estimator.estimate("txt2img", 1.0) != pytest.approx(13.0)


def test_cost_counts_both_passes_of_cfg():
    turbo = JobSpec(prompt="a", width=1024, height=1024, steps=8, cfg=1.0)
    base = JobSpec(prompt="a", width=1024, height=1024, steps=8, cfg=4.0)
    assert job_cost(turbo) == pytest.approx(1.0)
    assert job_cost(base) == pytest.approx(2.0)


async def test_figures_are_kept_in_sqlite_with_the_latest_profile_last(tmp_path):
    async with JobStore(tmp_path) as store:
        await save_speed_figure(store, "tiny@cpu", "txt2img", 3.0)
        await save_speed_figure(store, "zimage@cuda", "txt2img", 1.2)
        await save_speed_figure(store, "tiny@cpu", "upscale", 0.5)  # tiny@cpu updated last
    async with JobStore(tmp_path) as store:
        saved = await load_speed_figures(store)
    assert saved == {"zimage@cuda": {"txt2img": 1.2}, "tiny@cpu": {"txt2img": 3.0, "upscale": 0.5}}
    estimator = DurationEstimator()
    estimator.load(saved)
    assert estimator.profile == "tiny@cpu"  # until an engine is ready, the last run's machine
    assert estimator.estimate("upscale", 2.0) == pytest.approx(1.0)


async def test_a_restarted_bot_prices_its_first_job_from_the_last_runs_figures(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        _, job_id = await world.imagine(world.alice, prompt="a red cat", steps=3, seed=1)
        job = await world.wait_job(job_id)
        assert job.state == "done"
        saved = await load_speed_figures(world.bot.store)
        assert saved["tiny@cpu"]["txt2img"] > 0  # the real engine's measured time, in SQLite
        # An unmistakable figure: an hour for this job, were it the last run's.
        await save_speed_figure(world.bot.store, "tiny@cpu", "txt2img", 3600 / job_cost(job.spec))
        await world.restart()
        _, again = await world.imagine(world.alice, prompt="a red cat", steps=3, seed=1)
        queued_text = next(text for text in world.contents_sent() if again in text and "ETA" in text)
        assert "ETA ~1 h" in queued_text, queued_text
        assert (await world.wait_job(again)).state == "done"
