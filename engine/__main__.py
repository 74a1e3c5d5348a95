"""`python -m engine generate | serve | download`: the engine from the shell."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _engine_options(args):
    from engine.options import EngineOptions

    return EngineOptions(models=args.models, device=args.device, compile=args.compile, low_vram=args.low_vram)


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", choices=["zimage", "tiny"], default="zimage", help="real weights or the tiny model")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (slow start, fast steps)")
    parser.add_argument("--low-vram", choices=["auto", "on", "off"], default="auto", help="offload idle models to CPU")


def _output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(count)]


def cmd_generate(args) -> int:
    from engine.models import MissingWeightsError
    from engine.protocol import BadInput, Job, JobKind, Limits, resolve_parameters

    input_image = Path(args.input_image).read_bytes() if args.input_image else None
    job = Job(
        job_id="cli",
        kind=JobKind.IMG2IMG if input_image else JobKind.TXT2IMG,
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
        input_image=input_image,
    )
    limits = Limits.for_models(args.models)
    try:
        resolve_parameters(job, limits)  # refuse bad input before the heavy imports
        from engine.modes import run_image_job
        from engine.pipeline import PooledPipeline

        pooled = PooledPipeline(_engine_options(args)).load()
        result = run_image_job(
            pooled, job, limits, lambda step, total, _: print(f"step {step}/{total}", file=sys.stderr)
        )
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MissingWeightsError as exc:
        print(exc, file=sys.stderr)
        return 3
    for path, png in zip(_output_paths(Path(args.out), len(result.images)), result.images, strict=True):
        path.write_bytes(png)
        print(path)
    seeds = ", ".join(str(s) for s in result.parameters["seeds"])
    print(f"seed(s) {seeds}; {result.timings['total']:.2f} s", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from engine.protocol import Limits
    from engine.worker import serve

    return serve(_engine_options(args), Limits.for_models(args.models))


def cmd_download(args) -> int:
    from engine.models import ZIMAGE_COMPONENTS, MissingWeightsError, download, resolve

    if args.if_missing:
        try:
            resolve("zimage")
            return 0
        except MissingWeightsError:
            pass
    total = sum(c.size_gb for c in ZIMAGE_COMPONENTS)
    print(f"Downloading Z-Image weights (~{total:.0f} GB) into the Hugging Face cache; re-run to resume.")
    try:
        folders = download()
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
    generate.add_argument("--out", default="out.png")
    generate.set_defaults(handler=cmd_generate)

    serve = commands.add_parser("serve", help="run jobs from stdin (the bot starts this)")
    _add_engine_arguments(serve)
    serve.set_defaults(handler=cmd_serve)

    fetch = commands.add_parser("download", help="fetch all real weights into the HF cache")
    fetch.add_argument("--if-missing", action="store_true", help="do nothing when every file is already cached")
    fetch.set_defaults(handler=cmd_download)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
