"""Config validation, the launcher's refusals, and the process split (no torch in the bot)."""

import os
import subprocess
import sys

import pytest

from bot.config import ConfigError, load_config, parse_config
from bot.engine_env import Watchdog
from bot.errors import Refused
from bot.render import ASPECTS, fit_upload, size_for_aspect


def test_shipped_config_is_valid_and_defaults_to_real_weights():
    config = load_config("config.toml")
    assert config.engine.models == "zimage" and config.queue.per_user == 3 and config.queue.total == 50


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"engine": {"modles": "tiny"}}, "unknown key engine.modles"),
        ({"engine": {"models": "sdxl"}}, "engine.models must be one of zimage, tiny"),
        ({"queue": {"per_user": "3"}}, "queue.per_user must be a int"),
        ({"queue": {"per_user": 0}}, "queue.per_user must be positive"),
        ({"upscale": {"refine_tile": 1000}}, "upscale.refine_tile must be 0 or a multiple of 16 from 64; got 1000"),
        ({"engin": {}}, "unknown section [engin]"),
        ({"discord": {"shards": -1}}, "discord.shards must be 0 or more; got -1"),
        ({"engine": {"watchdog_silence_s": 2}}, "engine.watchdog_silence_s must be at least 5"),
        ({"engine": {"watchdog_job_floor_s": 0}}, "engine.watchdog_job_floor_s must be positive"),
    ],
)
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw)


def test_every_engine_gets_the_watchdog_config_toml_sets():
    from bot.bot import engine_client_for

    engine = {"devices": ["cuda:0", "cuda:1"], "watchdog_silence_s": 12, "watchdog_job_floor_s": 90}
    pool = engine_client_for(parse_config({"engine": engine}))
    assert {client.watchdog for client in pool.clients} == {Watchdog(12.0, 10.0, 90.0)}  # type: ignore[attr-defined]
    single = engine_client_for(parse_config({"engine": {"watchdog_job_factor": 3}}))
    assert single.watchdog.job_limit(60) == 600 and single.watchdog.job_limit(300) == 900  # max(3 x ETA, floor)


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[engine\nmodels = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def run_bot(*args, env_overrides):
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"} | env_overrides
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True, env=env, timeout=60)


def test_missing_token_is_one_clear_line_and_a_nonzero_exit():
    run = run_bot(env_overrides={})
    assert run.returncode == 2
    assert "DISCORD_TOKEN is not set" in run.stderr and "Traceback" not in run.stderr


def test_bad_config_key_stops_the_launcher_with_its_name(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[queue]\nper_usr = 3\n")
    run = run_bot("--config", str(path), env_overrides={"DISCORD_TOKEN": "x"})
    assert run.returncode == 2 and "unknown key queue.per_usr" in run.stderr and "Traceback" not in run.stderr


def test_no_network_to_discord_is_one_clear_line(tmp_path):
    # Discord's API moved to a local port nothing listens on: what a machine without network sees.
    path = tmp_path / "config.toml"
    path.write_text(f'[engine]\nmodels = "tiny"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    code = (
        "import sys, discord.http; discord.http.Route.BASE = 'http://127.0.0.1:9/api/v10';"
        f"from bot.__main__ import main; sys.exit(main(['--config', {str(path)!r}]))"
    )
    env = os.environ | {"DISCORD_TOKEN": "x"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 4, run.stderr[-2000:]
    assert "Cannot reach Discord" in run.stderr and "Traceback" not in run.stderr


def test_the_bot_side_never_imports_torch_or_diffsynth():
    code = (
        "import sys, bot, bot.views, bot.jobs, bot.submit, bot.delivery, bot.attachments, cogs.imagine, cogs.control, cogs.upscale,"
        " cogs.admin, cogs.queue; from bot import create_bot, load_config; create_bot(load_config('config.toml'));"
        "heavy = ('torch', 'diffsynth', 'transformers', 'controlnet_aux', 'realesrgan', 'basicsr', 'cv2');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_aspect_sizes_are_multiples_of_16_near_one_megapixel():
    for aspect in ASPECTS:
        width, height = size_for_aspect(aspect, 1024 * 1024)
        assert width % 16 == 0 and height % 16 == 0
        assert 0.9e6 < width * height < 1.15e6
        w, h = (int(x) for x in aspect.split(":"))
        assert abs(width / height - w / h) < 0.05


@pytest.mark.parametrize("crafted", ["7:0", "abc", "16:9:1", "-1:1", "1e9:1", ""])
def test_a_crafted_aspect_is_a_clear_refusal_not_a_crash(crafted):
    # The commands' choices are a suggestion a crafted interaction (or a stale stored default) can ignore.
    with pytest.raises(Refused, match="Unknown aspect; choose one of 1:1, 4:3"):
        size_for_aspect(crafted, 1024 * 1024)


def test_upload_fallback_chain_png_then_webp_then_jpeg():
    import io
    import random

    from PIL import Image

    rng = random.Random(0)
    noise = Image.frombytes("RGB", (256, 256), bytes(rng.getrandbits(8) for _ in range(256 * 256 * 3)))
    png = io.BytesIO()
    noise.save(png, "PNG")
    png = png.getvalue()
    assert fit_upload(png, len(png), "x").filename == "x.png"
    webp = fit_upload(png, int(len(png) * 0.8), "x")
    assert webp.filename.endswith((".webp", ".jpg")) and len(webp.data) <= len(png) * 0.8 and webp.note
    tiny = fit_upload(png, 4000, "x")
    assert tiny.filename.endswith(".jpg") and len(tiny.data) <= 4000
