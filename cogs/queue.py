"""/queue, /cancel and /help: where my jobs are, stop one, and what this server allows."""

from __future__ import annotations

from textwrap import shorten

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine_state import describe_engines
from bot.render import escaped
from bot.settings import SETTINGS, describe
from bot.status_view import CancelButton
from cogs.control import offered_modes

HELP_LIMITS = (
    "max_steps_turbo",
    "max_steps_base",
    "max_megapixels",
    "max_images",
    "max_queued",
    "daily_quota",
    "cooldown",
)


class QueueCommands(commands.Cog):
    def __init__(self, bot):
        self.bot = bot

    @app_commands.command(name="queue", description="Your jobs, their positions and ETAs")
    async def queue(self, interaction: discord.Interaction) -> None:
        jobs = self.bot.jobs
        mine = jobs.queue.jobs_of(interaction.user.id)
        lines = []
        for job_id in list(jobs.running):
            running = await jobs.store.get_job(job_id)
            if running and running.user_id == interaction.user.id:
                lines.append(f"▶️ `{running.id}` running now — {escaped(running.spec.prompt[:60])}")
        view = discord.ui.View(timeout=None)
        for queued in mine:
            record = await jobs.store.get_job(queued.job_id)
            position = jobs.queue.position(queued.job_id)
            prompt = escaped((record.spec.prompt if record else "")[:60])
            lines.append(f"#{position} `{queued.job_id}` ETA {jobs.eta_text(queued.job_id)} — {prompt}")
            if len(view.children) < 5:
                button = CancelButton(queued.job_id)
                button.item.label = f"Cancel {queued.job_id[:6]}"
                view.add_item(button)
        summary = f"{len(jobs.queue)} job(s) queued in all. {describe_engines(jobs.engine.engines())}."
        if not lines:
            await interaction.response.send_message(f"You have no jobs waiting. {summary}", ephemeral=True)
            return
        await interaction.response.send_message("\n".join([*lines, summary]), view=view, ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel your queued job (Manage Server: anyone's)")
    @app_commands.describe(job="The job id (default: your most recent queued job)")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        jobs = self.bot.jobs
        if job is None:
            here = interaction.guild_id
            mine = [q for q in jobs.queue.jobs_of(interaction.user.id) if q.guild_id == here]
            if not mine:
                await interaction.response.send_message("You have no queued job here to cancel.", ephemeral=True)
                return
            job = mine[-1].job_id
        record = await jobs.store.get_job(job.strip().strip("`"))
        if record is None or record.guild_id != interaction.guild_id:
            await interaction.response.send_message(f"There is no job `{job}` on this server.", ephemeral=True)
            return
        may_cancel_others = bool(interaction.permissions.manage_guild)
        reply = await jobs.cancel(record.id, interaction.user.id, may_cancel_others=may_cancel_others)
        await interaction.response.send_message(reply, ephemeral=True)

    @cancel.autocomplete("job")
    async def cancel_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        everyone = bool(interaction.permissions.manage_guild)
        choices = []
        queue = self.bot.jobs.queue
        for queued in queue.ordered() if everyone else queue.jobs_of(interaction.user.id):
            if queued.guild_id == interaction.guild_id:
                if current in queued.job_id:
                    choices.append(app_commands.Choice(name=f"{queued.job_id} ({queued.kind})", value=queued.job_id))
        return choices[:25]

    @app_commands.command(name="help", description="What the bot can do here, and this server's limits")
    async def help(self, interaction: discord.Interaction) -> None:
        rules = await self.bot.guild_settings.all(interaction.guild_id)
        embed = discord.Embed(title="Z-Image bot", colour=discord.Colour.blurple())
        embed.add_field(
            name="Commands",
            value=(
                "`/imagine prompt [lora]` — text to image (Turbo: fast; Base: 30 steps, honours negatives)\n"
                "`/control image prompt [mode]` — follow the edges, depth or pose of your image (Turbo)\n"
                "`/upscale image [scale] [refine]` — Real-ESRGAN ×2/×4; also the **Upscale image** message menu\n"
                "`/inpaint image prompt [mask] [region]` — redraw the white part of a mask, or a region (Turbo)\n"
                "Buttons: **Reroll** new seed · **Remix** edit the prompt · **Vary (Subtle/Strong)** / V1–V4 · "
                "**Upscale** / U1–U4 · **Zoom Out** · **Pan** ⬅️➡️⬆️⬇️ · **Info** · **Delete**\n"
                "`/imagine style:` server styles · `/settings` your defaults and Remix mode\n"
                "`/queue` — your jobs · `/cancel` — stop a queued job · `/config` — settings (Manage Server)"
            ),
            inline=False,
        )
        enabled = ", ".join(f"/{c}" for c in rules["commands"]) or "none"
        embed.add_field(name="Enabled here", value=enabled)
        embed.add_field(name="Default model", value=rules["default_model"])
        embed.add_field(name="GPU engines", value=shorten(describe_engines(self.bot.jobs.engine.engines()), 1024))
        embed.add_field(name="Control modes", value=", ".join(offered_modes(self.bot)) or "none right now")
        loras = self.bot.jobs.engine.loras()
        embed.add_field(
            name="LoRAs", value=shorten(", ".join(loras), 1024, placeholder=" …") if loras else "none installed"
        )
        for key in HELP_LIMITS:
            embed.add_field(name=key.replace("_", " "), value=describe(SETTINGS[key], rules[key]))
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot) -> None:
    await bot.add_cog(QueueCommands(bot))
