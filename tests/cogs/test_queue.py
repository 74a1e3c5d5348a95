"""The queue through the real bot: fairness, caps, cancel, restart and engine crash recovery."""

from tests.helpers import discord_world


async def test_fair_order_a_queues_three_b_queues_one_and_runs_second(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()  # A's first job goes to the GPU at once; the rest wait
        a_jobs = [(await world.imagine(world.alice, prompt=f"a cat {i}", seed=i, steps=2))[1] for i in range(3)]
        b_result, b_job = await world.imagine(world.bob, prompt="a dog", seed=9, steps=2)
        b_queued = next(text for text in world.contents_sent() if b_job in text and text.startswith("Queued"))
        assert b_queued.startswith("Queued — position 1,")  # B jumps ahead of A's 2nd and 3rd
        world.bot.jobs.resume()
        finished = [await world.wait_job(job_id) for job_id in [*a_jobs, b_job]]
        order = [job.id for job in sorted(finished, key=lambda job: job.started_at)]
        assert order == [a_jobs[0], b_job, a_jobs[1], a_jobs[2]]
        assert all(job.state == "done" for job in finished)


async def test_per_user_and_global_caps_refuse_with_clear_messages(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path, queue={"per_user": 2, "total": 3}) as world:
        world.bot.jobs.pause()  # the first job goes to the idle GPU at once; later ones stay queued
        for _ in range(3):
            assert (await world.imagine(world.alice, prompt="a cat", steps=2))[1]
        refused, _ = await world.imagine(world.alice, prompt="one more", steps=2)
        assert refused.ephemeral and "You already have 2 jobs queued" in refused.response.content
        assert (await world.imagine(world.bob, prompt="a dog", steps=2))[1]
        busy, _ = await world.imagine(world.mod, prompt="a bird", steps=2)
        assert busy.ephemeral and "The bot is busy" in busy.response.content
        assert len(await world.bot.store.jobs_in_state("queued")) == 3


async def test_cancel_button_on_a_queued_job_means_it_never_reaches_the_gpu(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        _, first_id = await world.imagine(world.alice, prompt="a cat", steps=2)  # goes to the idle GPU at once
        queued, job_id = await world.imagine(world.alice, prompt="a dog", steps=2)
        denied = await world.bob.click(queued.response.message, label="Cancel")
        assert denied.ephemeral and "only cancel your own" in denied.response.content
        cancelled = await world.alice.click(queued.response.message, label="Cancel")
        assert cancelled.ephemeral and "never reached the GPU" in cancelled.response.content
        world.bot.jobs.resume()
        assert (await world.wait_job(first_id)).state == "done"
        job = await world.bot.store.get_job(job_id)
        assert job.state == "cancelled" and job.attempts == 0 and job.started_at is None
        assert len(world.bot.jobs.queue) == 0
        assert any(text.startswith("Cancelled by") for text in world.contents_sent())


async def test_restart_with_three_queued_jobs_delivers_all_three(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        world.bot.jobs.pause()
        jobs = [(await world.imagine(member, prompt="a cat", seed=i, steps=2))[1]
                for i, member in enumerate((world.alice, world.bob, world.alice))]  # fmt: skip
        await world.restart()  # a new bot on the same database and Discord; the old one never ran them
        assert world.bot is not None
        finished = [await world.wait_job(job_id) for job_id in jobs]
        assert [job.state for job in finished] == ["done"] * 3
        posted = world.bot_messages()
        mentions = [m.content for m in posted if m.attachments]
        assert mentions.count(f"<@{world.alice.id}>") == 2 and mentions.count(f"<@{world.bob.id}>") == 1
        clicked = await world.bob.click([m for m in posted if m.attachments][0], label="Info")  # buttons still work
        assert clicked.ephemeral


async def test_engine_sigkill_mid_job_retries_it_and_the_next_job_is_fine(engine_client, tmp_path):
    async with discord_world(engine_client, tmp_path) as world:
        killed = []
        original_submit = engine_client.submit

        async def submit_and_kill_first_attempt(job, on_progress=None, **options):
            async def progress(event):
                if not killed:
                    killed.append(event.step)
                    engine_client.kill()  # a real SIGKILL of the real engine process
                if on_progress:
                    await on_progress(event)

            return await original_submit(job, progress, **options)

        engine_client.submit = submit_and_kill_first_attempt
        try:
            _, job_id = await world.imagine(world.alice, prompt="a cat", seed=5, steps=3)
            job = await world.wait_job(job_id, timeout=180)
        finally:
            del engine_client.submit
        assert killed and job.state == "done" and job.attempts == 1  # one engine death, retried
        _, next_id = await world.imagine(world.bob, prompt="a dog", steps=2)
        assert (await world.wait_job(next_id)).state == "done"
