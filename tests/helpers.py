"""What the tests share: an offline Discord (simcord) around the real bot with the real tiny
engine process, engine jobs built from spec fields, and test images (good and bad)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import simcord
from PIL import Image, ImageDraw

from bot import create_bot
from bot.config import parse_config
from bot.store import JobStore
from engine.jobspec import JobSpec
from engine.protocol import Job

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

    async def wait_job(
        self, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 90, settle_timeout=None
    ):
        """Until the job ends, then until the bot settles (within settle_timeout: other slow uploads may run)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = await self.bot.store.get_job(job_id)
            if job is not None and job.state in states:
                await self.env.settle(timeout=settle_timeout)
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
        if result.response is not None and result.ephemeral and not result.response.content.startswith("Queued: "):
            return None  # refused: nothing was queued (deferred ones answer "Queued: <status link>")
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
    # shards = 0 asks Discord for its recommendation; simcord's Discord recommends one shard.
    env = holder["env"] = simcord.Env(bot, shard_count=None if bot.shard_count else 1)
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


# -- engine jobs --------------------------------------------------------------------------------


def make_job(job_id: str = "t", *, input_image: bytes | None = None, preview_every: int = 0, **spec) -> Job:
    """A protocol Job whose spec has `spec`'s fields (kind, prompt, width, ...)."""
    return Job(job_id, JobSpec(**spec), input_image, preview_every)


def tiny_job(job_id: str = "t", *, input_image: bytes | None = None, preview_every: int = 0, **fields) -> Job:
    """A small, fast txt2img job for the tiny model (64x64, 3 steps, seed 1) with `fields` changed."""
    spec = {"prompt": "a red cat", "width": 64, "height": 64, "steps": 3, "seed": 1} | fields
    return make_job(job_id, input_image=input_image, preview_every=preview_every, **spec)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


# -- images -------------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def drawing(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((12, 12, size[0] - 12, size[1] - 12), outline="black", width=3)
    return image


def noise(size=(64, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def declaring(width: int, height: int) -> bytes:
    """A small real PNG whose header claims width x height: a decompression bomb's shape."""
    data = bytearray(encoded(drawing()))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data follows the signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def with_corrupt_exif(jpeg: bytes) -> bytes:
    garbage = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + b"\xde\xad" * 20  # IFD offset far past the end
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage + jpeg[2:]


BAD_INPUTS = [
    ("notes.png", b"this is a text file, renamed\n" * 20, "is not an image I can read"),
    ("paper.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "is a PDF"),
    ("logo.svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64"/>', "is an SVG"),
    ("empty.png", b"", "is empty (0 bytes)"),
    ("cut.png", encoded(noise())[:6000], "truncated or damaged"),
    ("cut.jpg", encoded(noise((256, 256)), "JPEG", quality=95)[:5000], "truncated or damaged"),
    ("bomb.png", declaring(8000, 8000), "declares 8000×8000 pixels (64 MP); the limit is 40 MP"),
    ("huge.png", declaring(30000, 30000), "declares more pixels than 40 MP"),
    ("dot.png", encoded(Image.new("RGB", (1, 1))), "1×1: too small"),
    ("strip.png", encoded(Image.new("RGB", (8000, 50), "white")), "aspect ratio over 6:1"),
]


# -- GPU workers over Redis (engine/remote_worker.py) -------------------------------------------


class WorkerProcess:
    """`python -m engine worker --models tiny --device cpu` as a real subprocess in its own session, so a
    SIGKILL takes its engine process down with it (a host that dies)."""

    def __init__(self, redis_url: str, name: str, prefix: str, *, lease_s: float, heartbeat_s: float = 0.5, threads=1):
        import sys
        import tempfile

        self.name = name
        self.command = [
            sys.executable, "-m", "engine", "worker", "--redis", redis_url, "--models", "tiny", "--device", "cpu",
            "--lora-dir", LORA_DIR, "--name", name, "--prefix", prefix,
            "--heartbeat-s", str(heartbeat_s), "--lease-s", str(lease_s),
        ]  # fmt: skip
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.log_path = Path(tempfile.mkdtemp(prefix="zimage-worker-")) / f"{name}.log"
        self.process = None

    def start(self) -> WorkerProcess:
        import subprocess

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, start_new_session=True
            )
        return self

    def kill(self) -> None:
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # an engine process left behind

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# -- event-loop responsiveness ------------------------------------------------------------------


class LoopLagProbe:
    """The event loop's longest stall: a task sleeps `interval` seconds in a loop and records how much
    later than asked it woke (wall clock), and how much CPU the loop's thread used meanwhile.
    `async with LoopLagProbe() as probe: ...; probe.max_ms, probe.max_busy_ms`.

    On a shared machine the wall-clock lag also counts time the OS gave the cores to other
    processes; `busy` counts only what the loop itself ran (a blocking call in a callback), less
    the cyclic garbage collector's pauses (`gc_ms`): those scale with the whole test process's heap
    (torch and diffsynth, imported by the engine tests, make a full pass ~280 ms here), not with
    what the bot ran, and the bot's own process never holds that heap.
    Run it from test code, not from inside the bot: simcord makes bot-owned timers virtual."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.lags: list[float] = []  # seconds late, one per wake-up
        self.busy: list[float] = []  # CPU seconds the loop's thread used between two wake-ups, less GC
        self.gc_pauses: list[float] = []  # seconds, one per collection while the probe ran
        self._gc_cpu = 0.0  # collector CPU time so far (loop thread only)
        self._gc_started: float | None = None
        self._task: asyncio.Task | None = None

    def _on_gc(self, phase: str, info: dict) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # a worker thread's collection does not hold the loop
        if phase == "start":
            self._gc_started = time.thread_time()
        elif self._gc_started is not None:
            pause = time.thread_time() - self._gc_started
            self._gc_cpu += pause
            self.gc_pauses.append(pause)
            self._gc_started = None

    async def _run(self) -> None:
        while True:
            asked, cpu, gc_cpu = time.perf_counter(), time.thread_time(), self._gc_cpu
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - asked - self.interval))
            self.busy.append(time.thread_time() - cpu - (self._gc_cpu - gc_cpu))

    async def __aenter__(self) -> LoopLagProbe:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._run(), name="loop-lag-probe")
        await asyncio.sleep(0)  # the probe runs before the code it measures
        return self

    async def __aexit__(self, *exc_info) -> None:
        assert self._task is not None
        await asyncio.sleep(self.interval * 2)  # a stall at the very end still gets its wake-up recorded
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        gc.callbacks.remove(self._on_gc)

    @property
    def gc_max_ms(self) -> float:
        return 1000 * max(self.gc_pauses, default=0.0)

    @property
    def max_ms(self) -> float:
        return 1000 * max(self.lags, default=0.0)

    @property
    def max_busy_ms(self) -> float:
        return 1000 * max(self.busy, default=0.0)

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.lags)
        return 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0


@contextlib.contextmanager
def upload_latency(seconds: float):
    """Every message post with files waits `seconds` of real time first, as a slow upload to Discord
    would: in a thread, so the bot's event loop stays free as it is during a real upload."""
    import time

    from simcord.http.client import FakeHTTPClient

    original = FakeHTTPClient.request

    async def request(self, route, *, files=None, form=None, **kwargs):
        if seconds and files and route.method == "POST" and route.path.endswith("/messages"):
            await asyncio.to_thread(time.sleep, seconds)
        return await original(self, route, files=files, form=form, **kwargs)

    FakeHTTPClient.request = request
    try:
        yield
    finally:
        FakeHTTPClient.request = original
