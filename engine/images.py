"""Image bytes in and out of the engine: PNG with parameters, input decoding, latent previews."""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from PIL import Image, ImageOps, PngImagePlugin

from engine.jobspec import MODEL_LABELS, ModelName

# Flux-VAE latent (16 channels) -> RGB, a linear fit (the factors ComfyUI uses for Flux latents).
# Good enough to show composition and colour between steps without running the VAE.
LATENT_RGB_FACTORS = [
    [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433], [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115], [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180], [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499], [-0.1262, -0.0982, -0.0778],
]  # fmt: skip
LATENT_RGB_BIAS = [-0.0329, -0.0718, -0.0851]


def parameters_text(params: dict[str, Any]) -> str:
    """The A1111-style `parameters` chunk most image viewers and sites understand."""
    lines = [params["prompt"]] if params.get("prompt") else []  # an upscale may have none
    if params.get("kind") == "upscale":
        fields = [
            f"Upscaler: Real-ESRGAN x4plus, Scale: {params['scale']}",
            f"Size: {params['width']}x{params['height']}",
            f"Source size: {params['input_width']}x{params['input_height']}",
        ]
        if params.get("refine"):  # the refine pass is a Turbo img2img over tiles
            fields += [
                f"Refine: {MODEL_LABELS[ModelName.TURBO]}",
                f"Steps: {params['steps']}",
                f"Seed: {params['seed']}",
            ]
            fields.append(f"Denoising strength: {params['denoise']}")
        lines.append(", ".join(fields))
        return "\n".join(lines)
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields = [
        f"Steps: {params['steps']}",
        "Sampler: FlowMatch Euler",
        f"CFG scale: {params['cfg']}",
        f"Seed: {params['seed']}",
        f"Size: {params['width']}x{params['height']}",
        f"Model: {MODEL_LABELS.get(params['model'], params['model'])}",
    ]
    if params.get("sigma_shift"):
        fields.append(f"Shift: {params['sigma_shift']:g}")
    if params.get("denoise", 1.0) < 1.0:
        fields.append(f"Denoising strength: {params['denoise']}")
    if params.get("control_mode"):
        fields.append(f"ControlNet: {params['control_mode']} {params.get('control_strength')}")
    if params.get("lora"):
        fields.append(f"LoRA: {params['lora']} {params['lora_strength']:g}")
    edit = params.get("kind")  # the edits name what they did; the source image is not in the file
    if edit == "zoom":
        fields.append(f"Zoom out: {params['zoom_factor']:g}x")
    elif edit == "pan":
        fields.append(f"Pan: {params['pan_direction']}, Source size: {params['input_width']}x{params['input_height']}")
    elif edit == "inpaint":
        fields.append(f"Inpaint: {params.get('region') or 'mask'}")
    if edit in ("zoom", "pan", "inpaint"):
        fields.append(f"ControlNet: inpaint {params['control_strength']}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def encode_png(image: Image.Image, params: dict[str, Any]) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_text(params))
    info.add_itxt("zimage", json.dumps(params, sort_keys=True))  # exact values, for reproduction
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)  # 4: most of the size win, ~3x faster than 9
    return buffer.getvalue()


def read_png_parameters(data: bytes) -> dict[str, Any]:
    """The JSON parameters an engine PNG carries (empty if it carries none)."""
    with Image.open(io.BytesIO(data)) as image:
        raw = image.text.get("zimage") if hasattr(image, "text") else None
    return json.loads(raw) if raw else {}


def decode_input_image(data: bytes) -> Image.Image:
    """Bytes -> RGB image with EXIF orientation applied and alpha flattened onto white."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.seek(0)  # animated: the first frame
        try:
            image = ImageOps.exif_transpose(opened)
        except Exception:  # a corrupt EXIF block: keep the pixels as stored
            image = opened.copy()
        image.load()
    if image.mode.startswith("I"):  # 16/32-bit grayscale: scale to 8 bits (convert() would clip at 255)
        peak = 255 if image.mode in ("I;8",) else 65535
        image = image.convert("I").point(lambda value: value * (255 / peak)).convert("L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize and centre-crop to exactly width x height (cover, no letterbox)."""
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


@torch.no_grad()
def latent_preview_jpeg(latents: torch.Tensor, max_side: int = 256) -> bytes:
    factors = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32)
    bias = torch.tensor(LATENT_RGB_BIAS, dtype=torch.float32)
    latent = latents[0].detach().to("cpu", torch.float32)  # C H W
    rgb = torch.einsum("chw,cr->hwr", latent, factors) + bias
    rgb = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(rgb, "RGB")
    scale = max_side / max(image.size)
    image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()
