"""`python -m engine generate | upscale | zoom | pan | inpaint | serve | download`: the engine from the shell."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _engine_options(args):
    from engine.jobspec import EngineOptions

    return EngineOptions(
        weights=args.models,
        device=args.device,
        compile=args.compile,
        low_vram=args.low_vram,
        controlnet_file=args.controlnet_file,
        lora_dir=args.lora_dir,
    )


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", choices=["zimage", "tiny"], default="zimage", help="real weights or the tiny model")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (slow start, fast steps)")
    parser.add_argument("--low-vram", choices=["auto", "on", "off"], default="auto", help="offload idle models to CPU")
    _add_controlnet_file_argument(parser)
    parser.add_argument("--lora-dir", default="", help="folder of LoRA .safetensors files jobs may name")


def _add_controlnet_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controlnet-file", default="", help="another file of the ControlNet Union 2.1 repo (default: the 8-step one)"
    )


def _output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(count)]


def cmd_generate(args) -> int:
    from engine.device import NoAcceleratorError
    from engine.jobspec import BadInput, JobKind, JobSpec, UnsupportedControlNetFile, resolve
    from engine.models import MissingWeightsError
    from engine.protocol import Job

    input_image = Path(args.input_image).read_bytes() if args.input_image else None
    kind = JobKind.IMG2IMG if input_image else JobKind.TXT2IMG
    if args.control_image:
        kind, input_image = JobKind.CONTROL, Path(args.control_image).read_bytes()
    spec = JobSpec(
        kind=kind,
        prompt=args.prompt,
        negative_prompt=args.negative,
        model=args.model,
        width=args.width,
        height=args.height,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        count=args.count,
        denoise=args.denoise,
        control_mode=args.control_mode if kind == JobKind.CONTROL else None,
        control_strength=args.control_strength,
        canny_low=args.canny_low,
        canny_high=args.canny_high,
        lora=args.lora,
        lora_strength=args.lora_strength,
    )
    options = _engine_options(args)
    limits = options.limits()
    try:
        job = Job("cli", resolve(spec, limits), input_image)  # refuse bad input before the heavy imports
        from engine.modes import run_image_job
        from engine.pipeline import PooledPipeline

        pooled = PooledPipeline(options).load()
        result = run_image_job(
            pooled, job, limits, lambda step, total, _: print(f"step {step}/{total}", file=sys.stderr)
        )
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MissingWeightsError, NoAcceleratorError) as exc:
        print(exc, file=sys.stderr)
        return 3
    except UnsupportedControlNetFile as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, png in zip(_output_paths(Path(args.out), len(result.images)), result.images, strict=True):
        path.write_bytes(png)
        print(path)
    if "control_map" in result.extra_images:
        path = Path(args.out).with_name(f"{Path(args.out).stem}-control{Path(args.out).suffix}")
        path.write_bytes(result.extra_images["control_map"])
        print(path)
    seeds = ", ".join(str(s) for s in result.spec.seeds)
    print(f"seed(s) {seeds}; {result.timings['total']:.2f} s", file=sys.stderr)
    return 0


def _add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upscale-tile", type=int, default=512, help="Real-ESRGAN tile side (input px); 0 = whole")
    parser.add_argument("--upscale-tile-pad", type=int, default=16, help="context pixels around each tile")
    parser.add_argument("--refine-tile", type=int, default=0, help="refine tile side (output px); 0 = 1024, tiny 64")
    parser.add_argument("--refine-overlap", type=int, default=128, help="pixels refine tiles share, feathered")
    parser.add_argument("--upscale-max-side", type=int, default=4096, help="largest output side an upscale may make")


def _upscale_options(args):
    from dataclasses import replace

    return replace(
        _engine_options(args),
        upscale_tile=args.upscale_tile,
        upscale_tile_pad=args.upscale_tile_pad,
        refine_tile=args.refine_tile,
        refine_overlap=args.refine_overlap,
        upscale_max_side=args.upscale_max_side,
    )


def cmd_serve(args) -> int:
    from engine.jobspec import EngineOptions
    from engine.worker import serve

    return serve(EngineOptions.from_dict(json.loads(args.options)))


def cmd_worker(args) -> int:
    from engine.remote_worker import run_worker

    options = _engine_options(args)
    return run_worker(
        args.redis, options, name=args.name, prefix=args.prefix, heartbeat_s=args.heartbeat_s, lease_s=args.lease_s,
        blob_dir=args.blob_dir,
    )  # fmt: skip


def cmd_upscale(args) -> int:
    from dataclasses import replace

    from engine.device import NoAcceleratorError
    from engine.jobspec import BadInput, JobKind, JobSpec, UnsupportedControlNetFile, resolve
    from engine.models import MissingWeightsError
    from engine.protocol import Job

    options = _upscale_options(args)
    limits = options.limits()
    try:
        data = Path(args.image).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
        return 2
    spec = JobSpec(
        kind=JobKind.UPSCALE, scale=args.scale, refine=args.refine, denoise=args.denoise, prompt=args.prompt,
        seed=args.seed,
    )  # fmt: skip
    try:
        from engine.images import decode_input_image

        try:
            width, height = decode_input_image(data).size
        except Exception as exc:
            raise BadInput(f"{args.image} is not an image this engine can read ({type(exc).__name__}).") from None
        spec = resolve(replace(spec, input_width=width, input_height=height), limits)  # before loading any model
        job = Job("cli", spec, data)
        from engine.upscale import run_upscale_job

        pooled = None
        if args.refine:
            from engine.pipeline import PooledPipeline

            pooled = PooledPipeline(options).load()
        result = run_upscale_job(
            pooled, job, limits, options, lambda step, total, _: print(f"step {step}/{total}", file=sys.stderr)
        )
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MissingWeightsError, NoAcceleratorError) as exc:
        print(exc, file=sys.stderr)
        return 3
    except UnsupportedControlNetFile as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_bytes(result.images[0])
    done = result.spec
    print(args.out)
    print(
        f"{done.input_width}x{done.input_height} -> {done.width}x{done.height}"
        f"{' refined' if done.refine else ''}; {result.timings['total']:.2f} s",
        file=sys.stderr,
    )
    return 0


def cmd_edit(args) -> int:
    """zoom, pan and inpaint: Turbo and the ControlNet's inpaint mode on one image, from the shell."""
    from engine.device import NoAcceleratorError
    from engine.jobspec import BadInput, JobSpec, UnsupportedControlNetFile, pan_size, resolve
    from engine.models import MissingWeightsError
    from engine.protocol import Job

    options = _engine_options(args)
    limits = options.limits()
    try:
        data = Path(args.image).read_bytes()
        mask = Path(args.mask).read_bytes() if getattr(args, "mask", None) else None
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        from engine.images import decode_input_image

        try:
            width, height = decode_input_image(data).size
        except Exception as exc:
            raise BadInput(f"{args.image} is not an image this engine can read ({type(exc).__name__}).") from None
        spec = JobSpec(
            kind=args.command, prompt=args.prompt, negative_prompt=args.negative, width=width, height=height,
            input_width=width, input_height=height, steps=args.steps, seed=args.seed,
            control_strength=args.strength, zoom_factor=getattr(args, "factor", 0.0),
            pan_direction=getattr(args, "direction", ""), region=getattr(args, "region", ""),
        )  # fmt: skip
        job = Job("cli", resolve(spec, limits, has_input=True), data, mask_image=mask)  # before loading models
        from engine.finish import finish
        from engine.outpaint import render_edit_job
        from engine.pipeline import PooledPipeline

        pooled = PooledPipeline(options).load()
        result = finish(
            render_edit_job(pooled, job, limits, lambda step, total, _: print(f"step {step}/{total}", file=sys.stderr))
        )
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MissingWeightsError, NoAcceleratorError) as exc:
        print(exc, file=sys.stderr)
        return 3
    except UnsupportedControlNetFile as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_bytes(result.images[0])
    done = result.spec
    print(args.out)
    scaled = args.command == "pan" and pan_size(width, height, done.pan_direction, limits)[2]
    print(
        f"{width}x{height} -> {done.width}x{done.height}{' (scaled to fit the size limits)' if scaled else ''}; "
        f"seed {done.seed}; {result.timings['total']:.2f} s",
        file=sys.stderr,
    )
    return 0


def download_components(controlnet_file: str):
    """What `download` fetches: the pipeline's files and the lazily loaded annotators and upscaler."""
    from engine import models

    extra = models.ANNOTATOR_COMPONENTS + (models.UPSCALER_COMPONENT,)
    return models.components_for("zimage", controlnet_file) + extra


def cmd_download(args) -> int:
    from engine.jobspec import UnsupportedControlNetFile
    from engine.models import MissingWeightsError, download, resolve

    try:
        components = download_components(args.controlnet_file)
    except UnsupportedControlNetFile as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.if_missing:
        try:
            resolve("zimage", components)  # every shard of every sharded folder, not just one
            return 0
        except MissingWeightsError:
            pass
    total = sum(c.size_gb for c in components)
    print(f"Downloading Z-Image weights (~{total:.0f} GB) into the Hugging Face cache; re-run to resume.")
    try:
        folders = download(components)
    except MissingWeightsError as exc:
        print(exc, file=sys.stderr)
        return 3
    for repo_id, folder in folders.items():
        print(f"{repo_id}: {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="The Z-Image engine.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate images from the shell")
    _add_engine_arguments(generate)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--negative", default="")
    generate.add_argument("--model", choices=["turbo", "base"], default="turbo")
    generate.add_argument("--width", type=int, default=1024)
    generate.add_argument("--height", type=int, default=1024)
    generate.add_argument("--steps", type=int, default=None)
    generate.add_argument("--cfg", type=float, default=None)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--count", type=int, default=1)
    generate.add_argument("--input-image", help="img2img source image")
    generate.add_argument("--denoise", type=float, default=0.6, help="img2img strength (0-1]")
    generate.add_argument("--control-image", help="ControlNet: the image to follow (Turbo only)")
    generate.add_argument(
        "--control-mode", default="canny", help="canny, depth, pose, lineart, softedge, mlsd, scribble or none"
    )
    generate.add_argument("--control-strength", type=float, default=0.8, help="ControlNet strength 0-1")
    generate.add_argument("--canny-low", type=int, default=100, help="canny lower threshold (0-255)")
    generate.add_argument("--canny-high", type=int, default=200, help="canny upper threshold (0-255)")
    generate.add_argument("--lora", help="a LoRA in --lora-dir, by name (the file name without .safetensors)")
    generate.add_argument("--lora-strength", type=float, default=1.0, help="LoRA strength (-2 to 2)")
    generate.add_argument("--out", default="out.png")
    generate.set_defaults(handler=cmd_generate)

    upscale = commands.add_parser("upscale", help="upscale an image x2 or x4 (Real-ESRGAN), optionally refined")
    _add_engine_arguments(upscale)
    _add_upscale_arguments(upscale)
    upscale.add_argument("--image", required=True, help="the image to upscale")
    upscale.add_argument("--scale", type=int, choices=[2, 4], default=4)
    upscale.add_argument("--refine", action="store_true", help="a Turbo img2img pass over the result, in tiles")
    upscale.add_argument("--denoise", type=float, default=0.3, help="refine strength (0-0.6]")
    upscale.add_argument("--prompt", default="", help="what the image shows (helps the refine pass)")
    upscale.add_argument("--seed", type=int, default=None)
    upscale.add_argument("--out", default="upscaled.png")
    upscale.set_defaults(handler=cmd_upscale)

    for name, about in (
        ("zoom", "zoom out: the image shrunk into the centre, the border drawn (Turbo + ControlNet inpaint)"),
        ("pan", "pan: the canvas grown by half the image in one direction, the new strip drawn"),
        ("inpaint", "redraw where a mask is white (or a region) of an image"),
    ):
        edit = commands.add_parser(name, help=about)
        _add_engine_arguments(edit)
        edit.add_argument("--image", required=True, help="the image to edit")
        if name == "zoom":
            edit.add_argument("--factor", type=float, default=2.0, help="how far to zoom out (1.1-3)")
        elif name == "pan":
            edit.add_argument("--direction", required=True, choices=["left", "right", "up", "down"])
        else:
            edit.add_argument("--mask", help="white = redraw, the image's aspect ratio")
            edit.add_argument("--region", default="", help="without a mask: left, right, top, bottom or centre")
        edit.add_argument("--prompt", required=True, help="what the whole image shows")
        edit.add_argument("--negative", default="")
        edit.add_argument("--steps", type=int, default=None)
        edit.add_argument("--seed", type=int, default=None)
        edit.add_argument("--strength", type=float, default=0.8, help="ControlNet strength (0-1]")
        edit.add_argument("--out", default=f"{name}.png")
        edit.set_defaults(handler=cmd_edit)

    serve = commands.add_parser("serve", help="run jobs from stdin (the bot starts this)")
    serve.add_argument("--options", required=True, help="the EngineOptions as JSON (the bot writes them)")
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser("worker", help="run jobs from Redis Streams (a GPU host of a bot with many GPUs)")
    _add_engine_arguments(worker)
    worker.add_argument(
        "--redis", default=os.environ.get("ZIMAGE_REDIS_URL"), required="ZIMAGE_REDIS_URL" not in os.environ,
        help="redis://[user:password@]host:6379/0, or rediss:// for TLS (default: $ZIMAGE_REDIS_URL, which keeps "
        "a password out of the process list)",
    )  # fmt: skip
    worker.add_argument("--name", default="", help="this worker's name in Redis (default: <hostname>-<device>)")
    worker.add_argument("--prefix", default="zi", help="key prefix shared with the bot's [queue] redis_prefix")
    worker.add_argument("--heartbeat-s", type=float, default=2.0, help="seconds between heartbeats (TTL: 3 of them)")
    worker.add_argument("--lease-s", type=float, default=60.0, help="the bot's lease; the claim is refreshed at 1/3")
    worker.add_argument("--blob-dir", default="", help="a directory shared with the bot ([queue] blob_dir)")
    worker.set_defaults(handler=cmd_worker)

    fetch = commands.add_parser("download", help="fetch all real weights into the HF cache")
    fetch.add_argument("--if-missing", action="store_true", help="do nothing when every file is already cached")
    _add_controlnet_file_argument(fetch)
    fetch.set_defaults(handler=cmd_download)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
