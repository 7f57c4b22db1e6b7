"""The pieces the families share: one timestep embedding, DiT's block in the l-DAE, and
one Schedule protocol."""
import numpy as np
import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

import probe
from probe.extractors.dit import net as dit_net
from probe.extractors.ldae import extractor as ldae
from probe.extractors.embeddings import timestep_embedding
from probe.extractors.schedules import DDPMSchedule, LDAESchedule, Schedule
from tolerances import assert_close_f32


@pytest.mark.parametrize("dim", [32, 33, 192, 256])
@pytest.mark.numerics
def test_timestep_embedding_is_diffusers_cos_first_unshifted_bit_for_bit(dim):
    # 192 = ADM-64's channels: a half (96) that is no power of two, where the order of
    # the float32 operations shows.  t includes fractional (rescaled) timesteps.
    t = torch.cat([torch.arange(1000.0), torch.tensor([0.5, 998.25])])
    ours = timestep_embedding(t, dim)
    theirs = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.equal(ours, theirs)  # exact: the same float32 ops, same machine, same kernels
    # and the formula, in float64: cos(t w_i), then sin(t w_i), w_i = 10000^(-i/half)
    half = dim // 2
    w = 10000.0 ** (-np.arange(half) / half)
    args = t.double().numpy()[:, None] * w
    want = np.concatenate([np.cos(args), np.sin(args), np.zeros((len(t), dim % 2))], axis=1)
    # cos and sin of float32 angles up to ~1000: off by the angle's rounding
    assert_close_f32(ours, want, scale=np.abs(args).max())


def test_the_ldae_is_built_from_dits_pieces():
    net = probe.load_model("ldae-fmnist").net
    assert all(type(b) is dit_net.DiTBlock for b in net.blocks)
    assert type(net.final_layer) is dit_net.FinalLayer
    assert type(net.t_embedder) is dit_net.TimestepEmbedder


def test_both_schedules_satisfy_the_protocol():
    config = ldae.validate_config(dict(image_size=16, patch_size=4, hidden_size=32,
                                       num_heads=2, noise_space="pixel"))
    for schedule in (DDPMSchedule("cosine", 100), LDAESchedule(config)):
        assert isinstance(schedule, Schedule)
    for name in ("ldae-fmnist", "adm-fmnist"):
        assert isinstance(probe.load_model(name).schedule, Schedule)
