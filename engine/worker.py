"""The engine process loop: read Jobs from stdin, run one at a time, answer on stdout.

stdout carries protocol frames only: at start-up the real stdout fd is kept for frames and
fd 1 is pointed at stderr, so anything a library prints (DiffSynth prints a lot) goes to the
log instead of corrupting the stream. A reader thread keeps reading stdin while a job runs,
so a Cancel reaches the running job at its next step.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import queue
import sys
import threading
import time
import traceback

from engine import protocol
from engine.jobspec import EngineOptions, JobKind
from engine.protocol import Cancel, Failure, FailureKind, GpuDone, Heartbeat, Job, Progress, Ready, Result, Shutdown

log = logging.getLogger("engine.worker")


class FrameWriter:
    def __init__(self, stream):
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, message: protocol.Message) -> None:
        frame = protocol.encode(message)
        with self.lock:
            self.stream.write(frame)
            self.stream.flush()


def claim_stdout_for_frames():
    """Return a binary stream on the original stdout and send fd 1 (and sys.stdout) to stderr."""
    frames = os.fdopen(os.dup(1), "wb")  # buffered: write() sends the whole frame (a raw write may not)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return frames


def out_of_memory_failure(job: Job) -> Failure:
    spec = job.spec
    return Failure(
        job.job_id,
        FailureKind.OUT_OF_MEMORY,
        f"The GPU ran out of memory for {spec.count} image(s) at {spec.width}x{spec.height}. "
        "Try a smaller size or fewer images.",
    )


EXIT_GPU_BROKEN = 70
HEARTBEAT_SECONDS = 2.0  # the bot's watchdog allows several missed beats before it acts


def load_scorer():
    """The NSFW scorer where the optional `nsfw` extra is installed, else None (screening off)."""
    from engine import nsfw

    if not nsfw.available:
        log.warning("NSFW screening is off: %s", nsfw.UNAVAILABLE_REASON)
        return None
    return nsfw.NsfwScorer(threads=2).load()


class GpuBroken(Exception):
    """An unrecoverable accelerator error (illegal memory access, device-side assert, ECC/Xid)."""


def gpu_is_broken(exc: BaseException, device: str) -> bool:
    """A CUDA error that left the device unusable; some (a cuBLAS out-of-memory) do not."""
    import torch

    accelerator_error = getattr(torch, "AcceleratorError", ())  # torch >= 2.8 raises it for CUDA errors
    if not (isinstance(exc, accelerator_error) or (isinstance(exc, RuntimeError) and "CUDA error:" in str(exc))):
        return False
    try:  # a sticky error (illegal address, device-side assert) fails every later call too
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        return torch.ones(1, device=device).sum().item() != 1
    except Exception:
        return True


class Worker:
    def __init__(self, options: EngineOptions, writer: FrameWriter):
        self.options = options
        self.limits = options.limits()
        self.writer = writer
        self.jobs: queue.Queue = queue.Queue()
        self.cancelled: set[str] = set()
        self.waiting: set[str] = set()  # received and not yet answered: a Cancel for these counts
        self.current_job_id: str | None = None
        self.finishing: queue.Queue = queue.Queue()  # Rendered jobs for the finisher thread; None stops it
        self.scorer = None  # engine.nsfw.NsfwScorer where the nsfw extra is installed
        self.pooled = None

    def read_forever(self, stream) -> None:
        """Reader thread: Jobs go to the queue, Cancels mark a job, end of stream stops the loop."""
        try:
            while True:
                message = protocol.read_message(stream)
                if message is None or isinstance(message, Shutdown):
                    break
                if isinstance(message, Cancel):
                    # Only a job not yet answered: a late Cancel must not poison the same job sent again.
                    if message.job_id in self.waiting:
                        self.cancelled.add(message.job_id)
                else:
                    self.waiting.add(message.job_id)
                    self.jobs.put(message)
        except Exception:
            log.exception("reading the control stream failed")
        self.jobs.put(None)

    def run(self, stdin) -> int:
        from engine.device import NoAcceleratorError, pick_device
        from engine.jobspec import UnsupportedControlNetFile, controlnet_file_modes
        from engine.models import MissingWeightsError, components_for, resolve

        try:
            # Fail fast, before the heavy imports; the device first, before anyone fetches 53 GB for it.
            controlnet_file_modes(self.options.controlnet_file)  # a lite, tile or unknown file
            pick_device(self.options.device, self.options.weights)
            resolve(self.options.weights, components_for(self.options.weights, self.options.controlnet_file))
            from engine.pipeline import PooledPipeline

            self.pooled = PooledPipeline(self.options).load()
        except MissingWeightsError as exc:
            log.error("%s", exc)
            self.writer.send(Failure("", FailureKind.MISSING_WEIGHTS, str(exc)))
            return 3
        except (NoAcceleratorError, UnsupportedControlNetFile) as exc:
            log.error("%s", exc)
            self.writer.send(Failure("", FailureKind.CANNOT_START, str(exc)))
            return 3
        self.scorer = load_scorer()
        ready = Ready(self.pooled.device, self.options.weights, self.limits, control_modes=self.control_modes())
        ready.nsfw_screening = self.scorer is not None
        self.writer.send(ready)
        threading.Thread(target=self.read_forever, args=(stdin,), daemon=True, name="engine-reader").start()
        return self.serve_jobs()

    def control_modes(self) -> list[str]:
        """The modes the ControlNet file was trained on whose annotator weights are on disk."""
        from engine.control import runnable_modes

        return runnable_modes(self.options.controlnet_file)

    def serve_jobs(self) -> int:
        """GPU work one job at a time until the reader says stop; the exit code for the process.

        A job's images are encoded (and screened) by the finisher thread while the GPU runs the
        next one: `GpuDone` tells the bot it may send that next job now.
        """
        from engine.finish import Rendered  # torch and PIL: imported once the models are loaded

        finisher = threading.Thread(target=self.finish_forever, daemon=True, name="engine-finisher")
        finisher.start()
        beating = threading.Event()
        threading.Thread(target=self.beat_forever, args=(beating,), daemon=True, name="engine-heartbeat").start()
        try:
            while (job := self.jobs.get()) is not None:
                self.current_job_id = job.job_id
                gpu_start = time.time()  # wall clock: bench/pipeline_gap.py lines jobs up across processes
                try:
                    outcome = self.handle(job)
                except GpuBroken:
                    # The CUDA context is gone: every later job would fail the same way. Exit without an
                    # answer, so the bot sees a dead engine, starts a fresh one and retries this job once.
                    log.critical("job %s broke the GPU; exiting so the engine is restarted:\n%s", job.job_id,
                                 traceback.format_exc())  # fmt: skip
                    return EXIT_GPU_BROKEN
                finally:
                    self.current_job_id = None
                if isinstance(outcome, Rendered):
                    outcome.timings.update(gpu_start_unix=gpu_start, gpu_end_unix=time.time())
                    self.writer.send(GpuDone(job.job_id))
                    self.finishing.put(outcome)
                else:
                    self.answer(outcome)
            return 0
        finally:
            beating.set()
            self.finishing.put(None)  # what the GPU finished is still encoded and answered
            finisher.join()

    def finish_forever(self) -> None:
        from engine.finish import finish

        while (rendered := self.finishing.get()) is not None:
            try:
                outcome: Result | Failure = finish(rendered, self.scorer)
            except Exception:
                log.error("job %s: encoding failed:\n%s", rendered.job_id, traceback.format_exc())
                message = "The engine hit an internal error; the operator can find it in the logs."
                outcome = Failure(rendered.job_id, FailureKind.INTERNAL, message)
            self.answer(outcome)

    def answer(self, outcome: Result | Failure) -> None:
        self.writer.send(outcome)
        self.waiting.discard(outcome.job_id)
        self.cancelled.discard(outcome.job_id)

    def beat_forever(self, stop: threading.Event) -> None:
        """While a job runs, a Heartbeat every HEARTBEAT_SECONDS: silence means a stopped or hung process."""
        while not stop.wait(HEARTBEAT_SECONDS):
            job_id = self.current_job_id
            if job_id is not None:
                self.writer.send(Heartbeat(job_id))

    def screen_preview(self, preview: bytes | None) -> float | None:
        if preview is None or self.scorer is None:
            return None
        from PIL import Image

        with Image.open(io.BytesIO(preview)) as image:
            return round(self.scorer.score(image.convert("RGB")), 4)

    def handle(self, job: Job):
        import torch

        from engine.models import MissingWeightsError
        from engine.modes import BadInput, Cancelled, render_image_job

        def on_progress(step: int, total: int, preview: bytes | None) -> None:
            if job.job_id in self.cancelled:
                raise Cancelled()
            self.writer.send(Progress(job.job_id, step, total, preview, self.screen_preview(preview)))

        try:
            if job.spec.kind == JobKind.UPSCALE:
                from engine.upscale import render_upscale_job

                return render_upscale_job(self.pooled, job, self.limits, self.options, on_progress)
            if job.spec.kind in (JobKind.ZOOM, JobKind.PAN, JobKind.INPAINT):
                from engine.outpaint import render_edit_job

                return render_edit_job(self.pooled, job, self.limits, on_progress)
            return render_image_job(self.pooled, job, self.limits, on_progress)
        except BadInput as exc:
            return Failure(job.job_id, FailureKind.BAD_INPUT, str(exc))
        except Cancelled:
            return Failure(job.job_id, FailureKind.CANCELLED, "Cancelled while running.")
        except MissingWeightsError as exc:  # an annotator's weights, loaded on first use
            log.error("%s", exc)  # what to fetch is for the operator's log, not for the channel
            mode = f"The {job.spec.control_mode} mode" if job.spec.control_mode else "This job"
            return Failure(job.job_id, FailureKind.MISSING_WEIGHTS, f"{mode} needs model files this bot does not "
                           "have yet; its operator can see which in the engine log.")  # fmt: skip
        except torch.OutOfMemoryError:
            log.warning(
                "out of memory on job %s (%sx%s x%s)", job.job_id, job.spec.width, job.spec.height, job.spec.count
            )
        except Exception as exc:
            if gpu_is_broken(exc, self.pooled.device):
                raise GpuBroken() from exc
            if "out of memory" not in str(exc).lower():  # cuBLAS/cuDNN allocation failures say it this way
                log.error("job %s failed:\n%s", job.job_id, traceback.format_exc())
                return Failure(
                    job.job_id,
                    FailureKind.INTERNAL,
                    "The engine hit an internal error; the operator can find it in the logs.",
                )
            log.warning("out of memory on job %s: %s", job.job_id, exc)
        # Only out-of-memory gets here: free memory now that no traceback holds the activations.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return out_of_memory_failure(job)


def serve(options: EngineOptions) -> int:
    frames = claim_stdout_for_frames()
    worker = Worker(options, FrameWriter(frames))
    return worker.run(sys.stdin.buffer)
