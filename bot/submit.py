"""One submission path for every command and button: guild rules, the queue, one acknowledgement.

`enqueue` checks the guild's policy, queues the job and answers the interaction exactly once:
an ephemeral refusal, or the public "queued — position, ETA" status message that progress
edits later (with the bot token: interaction tokens die after 15 minutes).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import discord

from bot.attachments import InputImage, prepare_image
from bot.errors import Refused
from bot.eta import format_eta, job_cost
from bot.offload import off_loop
from bot.orphans import NO_STATUS, cancel_job
from bot.status_view import status_view
from bot.store import JobExtras, StorageError
from engine.jobspec import BadInput, JobKind, JobSpec, resolve

if TYPE_CHECKING:
    from bot.bot import ZImageBot
    from bot.jobs import Submitted


log = logging.getLogger("bot.submit")

NO_EXTRAS = JobExtras()


@dataclass
class JobRequest:
    guild_id: int | None
    channel_id: int
    user_id: int
    spec: JobSpec
    extras: JobExtras = NO_EXTRAS
    input_image: bytes | None = None
    user_cap: int | None = None  # queued jobs this member may have; None: the operator's per-user cap
    mask_image: bytes | None = None  # inpaint: white = redraw (stored beside the input image)


def bot_of(interaction: discord.Interaction) -> ZImageBot:
    return cast("ZImageBot", interaction.client)


async def refuse(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral refusal, whether or not the interaction was deferred first."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


def upscale_scale(size: tuple[int, int], cap: int) -> tuple[int, str | None]:
    """Buttons and the menu ask for no scale: x4, or x2 where x4 would pass the output cap."""
    if max(size) * 4 > cap >= max(size) * 2:
        return 2, f"x2, since x4 would be larger than {cap} pixels."
    return 4, None


async def enqueue(
    interaction: discord.Interaction,
    command: str,
    spec: JobSpec,
    label: str,
    notes: Sequence[str] = (),
    *,
    extras: JobExtras = NO_EXTRAS,
    input_image: bytes | InputImage | None = None,
    mask_image: bytes | None = None,
) -> None:
    """Check, queue and acknowledge a job: `label` starts the public message ("Queued", "Reroll queued").
    An attachment (InputImage) is decoded only once the job is known to fit, at the size it uses."""
    bot = bot_of(interaction)
    try:
        admitted = await bot.policy.check(interaction, command, spec)
        if isinstance(input_image, InputImage):
            input_image = await prepared_input(bot, admitted.spec, input_image)
        request = JobRequest(
            interaction.guild_id, interaction.channel_id or 0, interaction.user.id, admitted.spec,
            replace(extras, spoiler=admitted.spoiler), input_image, admitted.user_cap, mask_image,
        )  # fmt: skip
        submitted = await bot.jobs.submit(request)
    except Refused as exc:
        await refuse(interaction, str(exc))
        return
    except StorageError as exc:  # disk full: this request fails, the bot and everything else carry on
        await refuse(interaction, f"I can't take jobs right now: {exc}")
        return
    text = f"{label} — position {submitted.position}, ETA {eta_of(bot, submitted)} (job `{submitted.job.id}`)"
    await post_queued(interaction, text + "".join(f"\n{note}" for note in notes), submitted.job.id)


def eta_of(bot: ZImageBot, submitted: Submitted) -> str:
    """The ETA to show. A job an idle engine took before this reply has left the queue, so the
    queue gives no ETA: then only its own run remains."""
    if submitted.eta != format_eta(None):
        return submitted.eta
    return format_eta(bot.jobs.estimator.estimate(submitted.job.kind, job_cost(submitted.job.spec)))


async def prepared_input(bot: ZImageBot, spec: JobSpec, checked: InputImage) -> bytes:
    """The attachment's bytes for the job, after the job's own checks: a 40 MP photo that an upscale
    would refuse for its size is never decoded; /control stores it reduced to about the size it uses."""
    try:
        resolved = resolve(spec, bot.jobs.limits, has_input=True)
    except BadInput as exc:
        raise Refused(str(exc)) from None
    fit = None if resolved.kind == JobKind.UPSCALE else (resolved.width, resolved.height)
    return (await off_loop(prepare_image, checked, fit)).data


async def enqueue_upscale(
    interaction: discord.Interaction,
    image: bytes | InputImage,
    size: tuple[int, int],
    spec: JobSpec,
    notes: Sequence[str] = (),
    *,
    auto_scale: bool = False,
    extras: JobExtras = NO_EXTRAS,
) -> None:
    """/upscale, the "Upscale image" menu and the Upscale buttons; `auto_scale` picks x4 or x2."""
    notes = list(notes)
    if auto_scale:
        scale, note = upscale_scale(size, bot_of(interaction).jobs.limits.max_upscale_side)
        spec = replace(spec, scale=scale)
        notes += [note] if note else []
    spec = replace(spec, kind=JobKind.UPSCALE, input_width=size[0], input_height=size[1], count=1)
    label = f"Upscale x{spec.scale}{' + refine' if spec.refine else ''} queued"
    await enqueue(interaction, "upscale", spec, label, notes, extras=extras, input_image=image)


async def post_queued(interaction: discord.Interaction, text: str, job_id: str) -> None:
    """The public status message of a queued job (progress edits go to it, with the bot token).
    A reply that fails goes to the channel instead; when that fails too the job is cancelled, so no
    job runs that nobody can follow or cancel."""
    bot = bot_of(interaction)
    message_id = None
    if not interaction.response.is_done():
        try:
            sent = await interaction.response.send_message(text, view=status_view(job_id))
            message_id = sent.message_id or (await interaction.original_response()).id
        except (discord.HTTPException, OSError) as exc:
            log.warning("job %s: the interaction reply failed (%s); posting its status in the channel", job_id, exc)
            text = f"<@{interaction.user.id}> {text}"
    else:  # deferred privately while a large attachment downloaded: the status goes to the channel
        text = f"<@{interaction.user.id}> {text}"
    if message_id is None:
        message = await _status_in_channel(bot, interaction, text, job_id)
        if message is None:
            job = await bot.store.get_job(job_id)
            if job is not None:
                await cancel_job(bot, job, NO_STATUS)
            return
        message_id = message.id
        if interaction.response.is_done():
            with contextlib.suppress(discord.HTTPException, OSError):
                await interaction.followup.send(f"Queued: {message.jump_url}", ephemeral=True)
    await bot.jobs.set_status_message(job_id, message_id)


async def _status_in_channel(
    bot: ZImageBot, interaction: discord.Interaction, text: str, job_id: str
) -> discord.Message | None:
    channel = bot.get_partial_messageable(interaction.channel_id or 0, guild_id=interaction.guild_id)
    try:
        return await channel.send(text, view=status_view(job_id))
    except (discord.HTTPException, OSError) as exc:
        log.warning("job %s: its status could not be posted in the channel either (%s); cancelling it", job_id, exc)
        return None
