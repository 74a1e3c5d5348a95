"""Buttons that survive restarts: each is a DynamicItem whose custom_id carries the job id.

Their state is in the store, not in memory, so a click on a week-old result after two
restarts works the same as a click a second after it was posted.
"""

from __future__ import annotations

import re
from pathlib import Path

import discord

from bot.jobs import JobRequest, Refused
from bot.render import info_embed

ID = r"(?P<job>[0-9a-f]{6,16})"


async def refuse(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral refusal, whether or not the interaction was deferred first."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


async def post_queued(interaction: discord.Interaction, text: str, job_id: str) -> None:
    """The public status message of a queued job (progress edits go to it, with the bot token)."""
    if interaction.response.is_done():
        # Deferred privately while a large attachment downloaded: the status goes to the channel.
        message = await interaction.channel.send(f"<@{interaction.user.id}> {text}", view=status_view(job_id))
        await interaction.followup.send(f"Queued: {message.jump_url}", ephemeral=True)
    else:
        await interaction.response.send_message(text, view=status_view(job_id))
        message = await interaction.original_response()
    await _service(interaction).set_status_message(job_id, message.id)


def _service(interaction: discord.Interaction):
    return interaction.client.jobs


async def _finished_job(interaction: discord.Interaction, job_id: str):
    job = await _service(interaction).store.get_job(job_id)
    if job is None or job.state != "done":
        await interaction.response.send_message("That result is no longer in the bot's records.", ephemeral=True)
        return None
    return job


async def _queue_follow_up(interaction: discord.Interaction, request: JobRequest, what: str) -> None:
    """Reroll and Vary: the clicker's own request, under the same guild rules as a command."""
    service = _service(interaction)
    policy = interaction.client.policy
    command = "control" if request.kind == "control" else "imagine"  # a reroll of /control is a /control
    try:
        request.params = await policy.check(interaction, command, request.params)
        request.user_cap = await policy.user_cap(interaction.guild_id)
        submitted = await service.submit(request)
    except Refused as exc:
        await refuse(interaction, str(exc))
        return
    text = f"{what} queued — position {submitted.position}, ETA {submitted.eta} (job `{submitted.job.id}`)"
    await post_queued(interaction, text, submitted.job.id)


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:reroll:{ID}"):
    def __init__(self, job_id: str):
        super().__init__(discord.ui.Button(label="Reroll", emoji="🎲", custom_id=f"zi:reroll:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await _finished_job(interaction, self.job_id)
        if job is None:
            return
        params = {k: v for k, v in job.params.items() if k not in ("seed", "seeds")}
        request = JobRequest(interaction.guild_id, interaction.channel_id, interaction.user.id, job.kind, params)
        if job.input_path and Path(job.input_path).exists():  # /control: the same control image and mode
            request.input_image = Path(job.input_path).read_bytes()
        await _queue_follow_up(interaction, request, "Reroll")


async def _stored_image(interaction: discord.Interaction, job_id: str, index: int):
    """(job, stored result `index`) for the V and U buttons; (job or None, None) after replying why not."""
    job = await _finished_job(interaction, job_id)
    if job is None:
        return None, None
    results = await _service(interaction).store.results_for(job_id)
    if index >= len(results) or not Path(results[index].path).exists():
        await interaction.response.send_message("That image is no longer stored.", ephemeral=True)
        return job, None
    return job, results[index]


class VaryButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:vary:{ID}:(?P<index>[0-3])"):
    def __init__(self, job_id: str, index: int, label: str = "Vary"):
        button = discord.ui.Button(label=label, emoji="🪄" if label == "Vary" else None)
        button.custom_id = f"zi:vary:{job_id}:{index}"
        super().__init__(button)
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"], int(match["index"]), item.label or "Vary")

    async def callback(self, interaction: discord.Interaction) -> None:
        job, source = await _stored_image(interaction, self.job_id, self.index)
        if source is None:
            return
        strength = _service(interaction).config.imagine.vary_strength
        params = {k: v for k, v in job.params.items() if k not in ("seed", "seeds")}
        params |= {"count": 1, "denoise": strength, "source": [self.job_id, self.index]}
        for key in ("control_mode", "control_strength", "canny_low", "canny_high"):  # a variation is plain img2img
            params.pop(key, None)
        request = JobRequest(
            interaction.guild_id, interaction.channel_id, interaction.user.id, "img2img", params,
            input_image=Path(source.path).read_bytes(),
        )  # fmt: skip
        await _queue_follow_up(interaction, request, f"Variation of image {self.index + 1}")


async def queue_upscale(
    interaction: discord.Interaction, image: bytes, size: tuple[int, int], options: dict, notes: list[str] = ()
) -> None:
    """/upscale, the "Upscale image" menu and the Upscale buttons: check, queue, acknowledge once."""
    client = interaction.client
    if options.get("scale") is None:  # buttons and the menu: x4, or x2 where x4 would pass the output cap
        cap = client.jobs.limits.max_upscale_side
        options = {**options, "scale": 2 if max(size) * 4 > cap >= max(size) * 2 else 4}
        if options["scale"] == 2:
            notes = [*notes, f"x2, since x4 would be larger than {cap} pixels."]
    try:
        # The guild's rules (place, role, quota, cooldown); the output cap is the engine's, checked in submit.
        params = await client.policy.check(interaction, "upscale", {"prompt": options.get("prompt", ""), "count": 1})
        params |= {"model": "turbo", "steps": None, "width": size[0], "height": size[1]} | options
        request = JobRequest(
            interaction.guild_id, interaction.channel_id, interaction.user.id, "upscale", params,
            input_image=image, user_cap=await client.policy.user_cap(interaction.guild_id),
        )  # fmt: skip
        submitted = await client.jobs.submit(request)
    except Refused as exc:
        await refuse(interaction, str(exc))
        return
    what = f"Upscale x{options['scale']}{' + refine' if options.get('refine') else ''}"
    text = f"{what} queued — position {submitted.position}, ETA {submitted.eta} (job `{submitted.job.id}`)"
    await post_queued(interaction, text + "".join(f"\n{note}" for note in notes), submitted.job.id)


class UpscaleButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:upscale:{ID}:(?P<index>[0-3])"):
    """Upscale (x4, or x2 where x4 is too large) of exactly the stored image `index` of a result."""

    def __init__(self, job_id: str, index: int, label: str = "Upscale"):
        button = discord.ui.Button(label=label, emoji="🔍" if label == "Upscale" else None)
        button.custom_id = f"zi:upscale:{job_id}:{index}"
        super().__init__(button)
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"], int(match["index"]), item.label or "Upscale")

    async def callback(self, interaction: discord.Interaction) -> None:
        job, stored = await _stored_image(interaction, self.job_id, self.index)
        if stored is None:
            return
        size = (stored.parameters["width"], stored.parameters["height"])
        options = {"scale": None, "refine": False, "denoise": 0.0, "prompt": job.params.get("prompt", "")}
        options["source"] = [self.job_id, self.index]
        await queue_upscale(interaction, Path(stored.path).read_bytes(), size, options)


class InfoButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:info:{ID}"):
    def __init__(self, job_id: str):
        super().__init__(discord.ui.Button(label="Info", emoji="ℹ️", custom_id=f"zi:info:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await _finished_job(interaction, self.job_id)
        if job is None:
            return
        await interaction.response.send_message(embed=info_embed(job.params, job.id), ephemeral=True)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:delete:{ID}"):
    def __init__(self, job_id: str):
        button = discord.ui.Button(label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger)
        button.custom_id = f"zi:delete:{job_id}"
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        job = await _service(interaction).store.get_job(self.job_id)
        may_manage = interaction.permissions.manage_messages
        if job is not None and job.user_id != interaction.user.id and not may_manage:
            await interaction.response.send_message(
                "Only the person who asked for this image, or a member with Manage Messages, can delete it.",
                ephemeral=True,
            )
            return
        await interaction.response.defer()
        await interaction.message.delete()


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=rf"zi:cancel:{ID}"):
    def __init__(self, job_id: str):
        button = discord.ui.Button(label="Cancel", style=discord.ButtonStyle.secondary)
        button.custom_id = f"zi:cancel:{job_id}"
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]):
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        may_cancel_others = bool(interaction.permissions.manage_guild)
        reply = await _service(interaction).cancel(
            self.job_id, interaction.user.id, may_cancel_others=may_cancel_others
        )
        await interaction.response.send_message(reply, ephemeral=True)


DYNAMIC_ITEMS = (RerollButton, VaryButton, UpscaleButton, InfoButton, DeleteButton, CancelButton)


def status_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job_id: str, count: int, kind: str = "txt2img") -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    if kind == "upscale":  # an upscale has no prompt to reroll, vary or show
        view.add_item(DeleteButton(job_id))
        return view
    view.add_item(RerollButton(job_id))
    if count == 1:
        view.add_item(VaryButton(job_id, 0))
        view.add_item(UpscaleButton(job_id, 0))
    else:
        for index in range(count):
            view.add_item(VaryButton(job_id, index, label=f"V{index + 1}"))
        for index in range(count):
            view.add_item(UpscaleButton(job_id, index, label=f"U{index + 1}"))
    view.add_item(InfoButton(job_id))
    view.add_item(DeleteButton(job_id))
    return view
