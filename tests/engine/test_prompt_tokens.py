"""Prompts are counted in the text encoder's tokens: one it would cut is refused, never silently shortened."""

import pytest

from engine.jobspec import BadInput, EngineOptions, JobKind
from engine.modes import run_image_job
from engine.pipeline import MAX_PROMPT_TOKENS
from tests.helpers import make_job, tiny_job


def longest_prompt(pooled) -> str:
    # The tiny tokenizer reads one token per character, so this is exactly the longest the encoder reads.
    return "a" * (MAX_PROMPT_TOKENS - pooled.prompt_tokens(""))


def test_tokens_are_counted_as_diffsynth_encodes_them(tiny_pipeline):
    tokenizer = tiny_pipeline.pipe.tokenizer
    prompt = longest_prompt(tiny_pipeline) + "bcd"
    assert tiny_pipeline.prompt_tokens(prompt) == MAX_PROMPT_TOKENS + 3
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    cut = tokenizer(templated, padding="max_length", max_length=MAX_PROMPT_TOKENS, truncation=True)["input_ids"]
    assert len(cut) == MAX_PROMPT_TOKENS  # what DiffSynth does to it: the end is dropped without a word


def test_the_longest_prompt_runs_and_one_token_more_is_refused(tiny_pipeline, tiny_limits):
    prompt = longest_prompt(tiny_pipeline)
    result = run_image_job(tiny_pipeline, tiny_job(prompt=prompt, steps=1), tiny_limits)
    assert len(result.images) == 1
    with pytest.raises(BadInput, match=r"The prompt is \d+ tokens long.*Shorten it by 1 token "):
        run_image_job(tiny_pipeline, tiny_job(prompt=prompt + "b", steps=1), tiny_limits)


def test_a_long_negative_prompt_is_refused_only_where_it_is_encoded(tiny_pipeline, tiny_limits):
    negative = longest_prompt(tiny_pipeline) + "bb"
    with pytest.raises(BadInput, match="The negative prompt is .* Shorten it by 2 tokens"):
        run_image_job(tiny_pipeline, tiny_job(negative_prompt=negative, cfg=2.0, steps=1), tiny_limits)
    assert run_image_job(tiny_pipeline, tiny_job(negative_prompt=negative, cfg=1.0, steps=1), tiny_limits).images


def test_a_refine_prompt_is_counted_too(tiny_pipeline, tiny_limits):
    from engine.upscale import run_upscale_job
    from tests.helpers import drawing, encoded

    prompt = longest_prompt(tiny_pipeline) + "b"
    job = make_job("up", kind=JobKind.UPSCALE, input_image=encoded(drawing((24, 24))), refine=True, denoise=0.3,
                   prompt=prompt)  # fmt: skip
    with pytest.raises(BadInput, match="tokens long"):
        run_upscale_job(tiny_pipeline, job, tiny_limits, EngineOptions(weights="tiny"))
