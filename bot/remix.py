"""Remix: edit a result's prompt and negative prompt before making it again, as Midjourney's Remix.

The Remix button opens the editor on any result with a prompt; with `/settings remix:on`, Reroll
and the Vary buttons open it first. A submitted edit goes through bot/submit.py like any command,
so the built-in prompt rule and the server's blocklist check the edited prompt.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

import discord

from bot.result_lookup import GONE, command_of, finished_job, job_inputs, read_stored
from bot.status_view import ID
from bot.store import JobExtras, JobRecord, ResultImage
from bot.submit import bot_of, enqueue, refuse
from engine.jobspec import JobKind, JobSpec

log = logging.getLogger("bot.remix")

MAX_PROMPT = 2000  # engine Limits.max_prompt_chars; a modal text input holds up to 4000


@dataclass(frozen=True)
class Variation:
    """A Vary click: which stored image, at what img2img strength ("subtle" or "strong")."""

    source: ResultImage
    how: str
    strength: float


def vary_spec(job: JobRecord, variation: Variation, prompt: str, negative: str, seed: int | None) -> JobSpec:
    """An img2img of stored image `variation.source` with the job's settings."""
    original, size = job.spec, variation.source.spec
    return JobSpec(
        kind=JobKind.IMG2IMG, prompt=prompt, negative_prompt=negative, model=original.model, width=size.width,
        height=size.height, steps=original.steps, cfg=original.cfg, denoise=variation.strength, seed=seed,
        lora=original.lora, lora_strength=original.lora_strength,
    )  # fmt: skip


def vary_extras(job: JobRecord, variation: Variation) -> JobExtras:
    source = variation.source
    return JobExtras(aspect=job.extras.aspect, source_job=job.id, source_index=source.idx, operation="vary")


async def queue_variation(
    interaction: discord.Interaction, job: JobRecord, variation: Variation, prompt: str, negative: str, seed=None
) -> None:
    spec = vary_spec(job, variation, prompt, negative, seed)
    label = f"Variation ({variation.how}) of image {variation.source.idx + 1} queued"
    image = await read_stored(variation.source.path)
    await enqueue(interaction, "imagine", spec, label, extras=vary_extras(job, variation), input_image=image)


class RemixModal(discord.ui.Modal):
    """The editor: prompt, negative prompt, keep the seed or draw a new one."""

    def __init__(self, job: JobRecord, variation: Variation | None = None):
        title = "Remix" if variation is None else f"Remix: Vary ({variation.how.capitalize()})"
        super().__init__(title=title, timeout=900)  # a random custom_id: two members may edit one result
        self.job = job
        self.variation = variation
        spec = job.spec
        self.seed = variation.source.seed if variation is not None else spec.seed
        self.prompt: discord.ui.TextInput = discord.ui.TextInput(
            custom_id="prompt", style=discord.TextStyle.paragraph, default=spec.prompt[:MAX_PROMPT],
            max_length=MAX_PROMPT,
        )  # fmt: skip
        self.negative: discord.ui.TextInput = discord.ui.TextInput(
            custom_id="negative", style=discord.TextStyle.paragraph, required=False,
            default=spec.negative_prompt[:MAX_PROMPT] or None, max_length=MAX_PROMPT,
        )  # fmt: skip
        self.keep_seed: discord.ui.Checkbox = discord.ui.Checkbox(custom_id="keep_seed", default=False)
        self.add_item(discord.ui.Label(text="Prompt", component=self.prompt))
        self.add_item(discord.ui.Label(text="Negative prompt", description="What to avoid", component=self.negative))
        description = f"Seed {self.seed}; unticked, a new seed is drawn"
        self.add_item(discord.ui.Label(text="Keep the seed", description=description, component=self.keep_seed))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        job = await bot_of(interaction).store.get_job(self.job.id)  # deleted while the editor was open?
        if job is None:
            await refuse(interaction, GONE)
            return
        prompt, negative = self.prompt.value.strip(), (self.negative.value or "").strip()
        seed = self.seed if self.keep_seed.value else None
        if self.variation is not None:
            await queue_variation(interaction, job, self.variation, prompt, negative, seed)
            return
        spec = replace(job.spec, prompt=prompt, negative_prompt=negative, seed=seed)
        image, mask = await job_inputs(bot_of(interaction).store, job)
        extras = replace(job.extras, style=None)  # the edited prompt is the final one
        await enqueue(
            interaction, command_of(job.kind), spec, "Remix queued", extras=extras, input_image=image, mask_image=mask
        )

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:  # type: ignore[override]
        log.error("remix of job %s failed", self.job.id, exc_info=error)
        await refuse(interaction, "Something went wrong on our side; the operator can find it in the bot's log.")


async def open_remix(interaction: discord.Interaction, job: JobRecord, variation: Variation | None = None) -> None:
    await interaction.response.send_modal(RemixModal(job, variation))


async def remix_mode(interaction: discord.Interaction) -> bool:
    """Whether the member who clicked has Remix mode on (/settings remix:on)."""
    return (await bot_of(interaction).user_settings.get(interaction.user.id)).remix


class RemixButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:remix:{ID}"):
    def __init__(self, job_id: str):
        super().__init__(discord.ui.Button(label="Remix", emoji="🎨", custom_id=f"zi:remix:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await finished_job(interaction, self.job_id)
        if job is None:
            return
        if job.kind == JobKind.UPSCALE:
            await refuse(interaction, "An upscale has no prompt to remix: remix the image it was made from.")
            return
        await open_remix(interaction, job)
