"""The dataset transform against torchvision's own pipeline, computed independently here:
``v2.Compose([ToImage(), ToDtype(float32, scale=True), Resize(S, antialias=True),
CenterCrop(S)])`` on the decoded PIL image.  probe resizes in two 1-D passes and drops
the crop's columns before the second; the values must not move by one bit."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from probe.data import load_dataset
from probe.data.transforms import image_transform

PHOTO = os.path.join(os.path.dirname(__file__), "..", "fixtures", "imagenet_photos", "22",
                     "imagenet_17_22.jpg")


def torchvision_pipeline(size, mode):
    from torchvision.transforms import v2 as T

    return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True),
                      T.Resize(size, interpolation=T.InterpolationMode(mode), antialias=True),
                      T.CenterCrop(size)])


def photos():
    """A bundled photo at ImageNet's shapes: landscape, portrait, odd sides, grayscale."""
    rgb = Image.open(PHOTO).convert("RGB")
    out = {f"{w}x{h}": rgb.resize((w, h), Image.BICUBIC)
           for w, h in ((500, 375), (375, 500), (333, 500), (257, 191))}
    out["gray 500x333"] = rgb.convert("L").resize((500, 333), Image.BICUBIC)
    return out


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [224, 256, 384])  # 384: every photo here is enlarged
def test_transform_equals_torchvision_bit_for_bit(size, mode):
    ours, ref = image_transform(size, None, mode), torchvision_pipeline(size, mode)
    for name, im in photos().items():
        x, want = ours(im), ref(im).clamp(0, 1)
        assert x.shape == want.shape == ((1 if im.mode == "L" else 3), size, size), name
        assert torch.equal(x, want), f"{name}: max diff {(x - want).abs().max():.3g}"


def test_other_modes_and_batches_go_the_same_way():
    ims = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for name, im in photos().items()
           if name in ("500x375", "375x500")]
    ref = torchvision_pipeline(64, "nearest")
    assert torch.equal(image_transform(64, 3, "nearest")(ims[0]), ref(ims[0]))
    batch = torch.stack([ims[0], ims[0].flip(-1)])  # (N, C, H, W), as ArrayDataset sends
    one_by_one = torch.stack([image_transform(100, 3)(x) for x in batch])
    assert torch.equal(image_transform(100, 3)(batch), one_by_one)


def test_imagefolder_values_are_the_decoded_files_through_torchvision(tmp_path):
    # JPEG, PNG with alpha (converted to RGB), grayscale PNG: each file's decoded pixels
    # through torchvision's pipeline, as the data loader delivers them
    rgb = Image.open(PHOTO).convert("RGB").resize((500, 375), Image.BICUBIC)
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    rgb.save(tmp_path / "a" / "photo.JPEG", quality=90)
    rgba = rgb.transpose(Image.FLIP_LEFT_RIGHT).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "a" / "alpha.png")
    rgb.convert("L").save(tmp_path / "b" / "gray.png")
    ds = load_dataset(f"imagefolder:{tmp_path}", "train", 224, 3)
    ref = torchvision_pipeline(224, "bicubic")
    for i, path in enumerate(ds.paths):
        with Image.open(path) as im:
            want = ref(im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy())
        want = want.clamp(0, 1).expand(3, -1, -1)
        assert torch.equal(ds[i][0], want), path
    assert not ds.bad
