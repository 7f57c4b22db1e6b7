"""The l-DAE's four tokenizers: shapes, training, the pixel-side variants, and the
train -> save -> load -> extract path of each, on tiny configs."""
import numpy as np
import pytest
import torch

import probe
from probe.cli import main
from probe.data import load_dataset
from probe.errors import ProbeError
from probe.extractors.ldae import extractor as ldae
from probe.extractors.ldae.tokenizer import make_tokenizer, patchify
from probe.train.ldae import LDAEObjective, build, random_crop
from probe.train.loop import Images
from probe.train.pca import sample_patches
from probe.train.tokenizers import fit_tokenizer
from tolerances import approx_f32, assert_close_f32

TINY = dict(image_size=16, in_channels=1, patch_size=4, hidden_size=32, depth=2, num_heads=2,
            latent_dim=3, tokenizer_width=8)
KINDS = ["pca", "patch-ae", "patch-vae", "conv-vae"]


@pytest.fixture(scope="module")
def demo16():
    return Images(load_dataset("demo", "train", 16, 1), limit=256, progress=False)


def to_pixels(x):
    return x * 2 - 1


@pytest.mark.parametrize("kind", KINDS)
def test_shapes(kind):
    tok = make_tokenizer(ldae.validate_config(dict(TINY, tokenizer=kind)))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    z = tok.encode(x)
    assert z.shape == (2, 16, 3)                       # one token per 4x4 patch, d = 3
    assert tok.decode(z, x.shape).shape == x.shape
    assert tok.latent_noise(torch.randn_like(x)).shape == z.shape
    one = torch.ones(2, 1, 1)
    assert_close_f32(tok.mix(x, torch.randn_like(x), one, 0 * one), tok.project(x), n=16)


@pytest.mark.numerics
def test_pca_generic_path_equals_its_own(demo16):
    """encode/decode of the PCA tokenizer are its first d coordinates, as mix uses them."""
    model = build(dict(TINY, latent_dim=5), demo16, pca_patches=2000)
    tok = model.net.tokenizer
    x = to_pixels(demo16[torch.arange(4)])
    V, mean = tok.components[:5].double().numpy(), tok.mean.double().numpy()
    z = (patchify(x, 4).double().numpy() - mean) @ V.T
    assert_close_f32(tok.encode(x), z, n=16)  # float32 projections of 16-value patches
    assert_close_f32(tok.decode(tok.encode(x), x.shape), tok.project(x), n=16)


@pytest.mark.parametrize("kind, steps", [("patch-ae", 300), ("patch-vae", 300),
                                         ("conv-vae", 15)])
def test_reconstruction_losses_fall(demo16, kind, steps):
    tok = make_tokenizer(ldae.validate_config(dict(TINY, tokenizer=kind)))
    meta = fit_tokenizer(tok, demo16, to_pixels, patches=4000, steps=steps,
                         batch_size=64 if kind != "conv-vae" else 16, lr=1e-2 if kind != "conv-vae"
                         else 2e-3, kl_weight=0.1)
    recon = [e["recon"] for e in meta["loss"]]
    assert recon[-1] < 0.7 * recon[0]
    if kind == "patch-vae":
        assert all(e["kl"] > 0 for e in meta["loss"])
    assert not any(p.requires_grad for p in tok.parameters())  # frozen after its stage


def test_patch_ae_reaches_the_pca_optimum(demo16):
    """Eckart-Young: no rank-d linear reconstruction beats PCA's; a trained AE gets close."""
    tok = make_tokenizer(ldae.validate_config(dict(TINY, tokenizer="patch-ae")))
    fit_tokenizer(tok, demo16, to_pixels, patches=4000, steps=800, batch_size=256, lr=1e-2)
    x = sample_patches(demo16, 4, 4000, 0, to_pixels).numpy()
    c = x - x.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    pca_err = ((c - c @ vt[:3].T @ vt[:3]) ** 2).mean()
    with torch.no_grad():
        z = (torch.as_tensor(x).float() - tok.mean) @ tok.encoder.T
        ae_err = ((z @ tok.decoder + tok.mean - torch.as_tensor(x).float()) ** 2).mean().item()
    assert pca_err * (1 - 1e-4) <= ae_err < 1.1 * pca_err


@pytest.mark.numerics
def test_linear_ae_weights_the_residual_like_pca(demo16):
    """An AE whose encoder and decoder are PCA's first d components splits the residual as
    PCA does: weight 1 inside the latent subspace, the residual weight outside."""
    pca = build(dict(TINY, latent_dim=3), demo16, pca_patches=2000).net.tokenizer
    ae = make_tokenizer(ldae.validate_config(dict(TINY, tokenizer="patch-ae")))
    with torch.no_grad():
        ae.mean.copy_(pca.mean)
        ae.encoder.copy_(pca.components[:3] * 2)   # any basis of the same subspace
        ae.decoder.copy_(pca.components[:3] / 2)
    r = torch.randn(3, 1, 16, 16)
    # projections of 16-value patches, then means over 256 pixels
    assert_close_f32(ae.weighted_error(r, 0.1), pca.weighted_error(r, 0.1), n=16 * 256)


def capture(model):
    seen = {}

    def hook(module, args, output):
        seen["x_t"], seen["t"], seen["out"] = args[0].detach(), args[1], output.detach()

    return seen, model.net.register_forward_hook(hook)


@pytest.mark.numerics
def test_latent_input_and_projected_output(demo16):
    """--input latent: the network reads gamma z + sigma eps, z the latent map; --output
    projected: the target is decode(encode(x))."""
    cfg = dict(TINY, tokenizer="patch-ae", net_input="latent", net_output="projected",
               residual_weight=1.0)
    model = build(cfg, demo16, pca_patches=2000, tokenizer_options=dict(steps=20))
    torch.nn.init.normal_(model.net.final_layer.linear.weight, std=0.1)
    assert model.input_shape == (3, 4, 4)
    images = demo16[torch.arange(4)]
    seen, handle = capture(model)
    loss = LDAEObjective(model).loss(images, None, torch.Generator().manual_seed(1))
    handle.remove()
    replay = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (4,), generator=replay)
    noise = torch.randn(4, 3, 4, 4, generator=replay)
    tok, x0 = model.net.tokenizer, to_pixels(images)
    z = tok.encode(x0).transpose(1, 2).reshape(4, 3, 4, 4)
    sigma = (2 ** 0.5 * t.double() / 999).float().view(-1, 1, 1, 1)
    assert_close_f32(seen["x_t"], z + sigma * noise, n=2)
    assert_close_f32(model.prepare(images), z, n=16)
    err = (seen["out"] - tok.project(x0)).pow(2).flatten(1).mean(1)  # weight 1: plain MSE
    want = (err / (1 + sigma.flatten() ** 2)).mean()
    assert loss.item() == approx_f32(want.item(), n=x0.numel())


def test_random_crop_is_a_crop_of_the_padded_image():
    images = torch.rand(5, 1, 16, 16)
    out = random_crop(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    where = []
    for i in range(5):
        hits = [(a, b) for a in range(5) for b in range(5)
                if torch.equal(out[i], padded[i, :, a:a + 16, b:b + 16])]  # copies
        assert hits
        where.append(hits[0])
    assert len(set(where)) > 1  # an offset per image, not one per batch


TRAIN = ["train", "ldae", "--data", "demo", "--image-size", "16", "--patch-size", "4",
         "--latent-dim", "3", "--hidden-size", "32", "--depth", "2", "--num-heads", "2",
         "--limit", "64", "--batch-size", "16", "--steps", "2", "--pca-patches", "2000",
         "--tokenizer-steps", "3", "--tokenizer-width", "8", "--quiet", "--threads", "1"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_tokenizer_trains_saves_loads_and_extracts(kind, tmp_path):
    out = tmp_path / kind
    assert main(TRAIN + ["--tokenizer", kind, "--augment", "crop", "--out", str(out)]) == 0
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["version"] == 3 and saved["config"]["tokenizer"] == kind
    assert saved["meta"]["tokenizer"]["kind"] == kind
    model = probe.load_model("ldae", checkpoint=str(out / "model.pt"))
    assert model.net.tokenizer.kind == kind
    for key, value in model.net.tokenizer.state_dict().items():  # the trained tokenizer
        assert torch.equal(value, saved["model"]["tokenizer." + key])  # a copy
    images = torch.rand(2, 1, 16, 16)
    assert model.encode(images, t=10).shape == (2, 32)
    h5 = tmp_path / f"{kind}.h5"
    assert main(["extract", "--model", "ldae", "--checkpoint", str(out / "model.pt"),
                 "--data", "demo", "--split", "test", "--limit", "4", "--t", "10",
                 "--blocks", "blocks.0", "--quiet", "--out", str(h5)]) == 0
    feats = probe.open_features(str(h5))
    assert feats.load(feats.keys[0]).shape == (4, 32)


def test_tokenizer_file_round_trip_and_mismatch(tmp_path, capsys):
    path = tmp_path / "tok.pt"
    common = ["--data", "demo", "--image-size", "16", "--patch-size", "4", "--limit", "64",
              "--tokenizer", "patch-vae", "--tokenizer-steps", "3", "--quiet", "--threads", "1"]
    assert main(["train", "tokenizer", "--latent-dim", "3", "--out", str(path)] + common) == 0
    out = tmp_path / "run"
    assert main(TRAIN + ["--tokenizer", "patch-vae", "--tokenizer-checkpoint", str(path),
                         "--out", str(out)]) == 0
    file_state = torch.load(path, weights_only=True)["state"]
    model = probe.load_model("ldae", checkpoint=str(out / "model.pt"))
    for key, value in file_state.items():
        assert torch.equal(model.net.tokenizer.state_dict()[key], value)  # a copy
    bad = [a if a != "3" else "5" for a in TRAIN]  # --latent-dim 5
    assert main(bad + ["--tokenizer", "patch-vae", "--tokenizer-checkpoint", str(path),
                       "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "has latent_dim=3, this l-DAE latent_dim=5" in err[-1]


@pytest.mark.parametrize("change, message", [
    (dict(tokenizer="vq"), "tokenizer must be one of"),
    (dict(net_input="noisy"), "net_input must be one of projected, latent"),
    (dict(tokenizer="conv-vae", target="noise"), "needs pixel input through an affine"),
    (dict(noise_space="pixel", latent_dim=None, tokenizer="patch-ae"), "only applies to"),
])
def test_bad_tokenizer_configs_are_one_line_errors(change, message):
    with pytest.raises(ProbeError, match=message):
        ldae.validate_config(dict(TINY, **change))
