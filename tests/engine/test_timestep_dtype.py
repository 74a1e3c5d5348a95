"""The timestep embedder computes in the pipeline's dtype: overridden only where DiffSynth's bf16 is wrong."""

import torch
from diffsynth.models import z_image_dit

from engine.pipeline import compute_timestep_embeddings_in


def embedder() -> z_image_dit.TimestepEmbedder:
    torch.manual_seed(0)
    return z_image_dit.TimestepEmbedder(8, mid_size=16, frequency_embedding_size=32)


def test_diffsynths_class_is_left_as_it_ships():
    assert z_image_dit.TimestepEmbedder.forward.__module__ == "diffsynth.models.z_image_dit"


def test_on_the_cpu_the_loaded_dits_embed_timesteps_in_float32(tiny_pipeline):
    for dit in tiny_pipeline.dits.values():
        module = dit.t_embedder
        t = torch.tensor([0.25, 0.75])
        expected = module.mlp(module.timestep_embedding(t, module.frequency_embedding_size))
        out = module(t)
        assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_the_cast_follows_the_computation_dtype_not_the_stored_weights():
    module = embedder().to(torch.bfloat16)  # weights stored in bf16, computation in float32: a mismatch
    compute_timestep_embeddings_in(torch.nn.Sequential(module), torch.float32)
    seen = []

    def record(_, args):
        seen.append(args[0].dtype)

    module.mlp[0].register_forward_pre_hook(record)
    try:
        module(torch.tensor([0.5]))
    except RuntimeError:  # float32 input into bf16 weights: expected here, the input dtype is what is checked
        pass
    assert seen == [torch.float32]


def test_a_bf16_pipeline_keeps_diffsynths_own_forward():
    module = embedder()
    compute_timestep_embeddings_in(torch.nn.Sequential(module), torch.bfloat16)
    assert "forward" not in vars(module)
