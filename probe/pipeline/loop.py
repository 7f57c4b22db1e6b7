"""The extraction loop: read a shard's batches, noise them, run the network up to the last
block asked for, pool, and write each batch as one part of the run folder."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..data.indexed import Indexed, Item
from ..errors import ProbeError
from .noise import per_sample_noise
from .pooling import apply_pool

if TYPE_CHECKING:
    from ..extractors.base import Extractor
    from ..selection import Key
    from .settings import FeatureSettings
    from .workdir import Workdir

DTYPES = {"float32": np.float32, "float16": np.float16}


def _collate(batch: list[Item]) -> dict[str, Any]:
    good = [b for b in batch if b[1] is not None]
    return {
        "index": np.array([b[0] for b in good], dtype=np.int64),
        "images": torch.stack([b[1] for b in good]) if good else None,
        "labels": torch.tensor([b[2] for b in good], dtype=torch.long),
        "bad": [(b[0], b[3]) for b in batch if b[1] is None],
    }


@torch.inference_mode()
def run_batches(model: Extractor, data: Any, todo: list[list[int]], keys: Sequence[Key],
                work: Workdir, settings: FeatureSettings, *, num_workers: int,
                device: torch.device, stack_t: bool, progress: bool, shard_size: int) -> None:
    """Extract the batches ``todo`` (lists of dataset indices) into parts of ``work``."""
    from tqdm import tqdm

    if not todo:
        return
    loader = torch.utils.data.DataLoader(
        Indexed(data), batch_sampler=todo, num_workers=num_workers, collate_fn=_collate,
        pin_memory=device.type == "cuda")
    np_dtype = DTYPES[settings.dtype]
    bar = tqdm(total=shard_size, initial=shard_size - sum(len(b) for b in todo), unit="img",
               disable=not progress, dynamic_ncols=True, desc="extract")
    for batch in loader:
        if batch["bad"] and not settings.skip_bad:
            i, reason = batch["bad"][0]
            raise ProbeError(f"cannot decode image {reason} — fix or remove it, or pass "
                             "--skip-bad to skip such images (they are recorded in the file)")
        arrays = []
        if batch["images"] is not None:
            ids = [data.ids[i] for i in batch["index"]]
            label = settings.class_label
            y = batch["labels"] if label == "true" else None if label is None else int(label)
            feats = features(model, batch["images"].to(device, non_blocking=True), ids, y,
                             settings, stack_t)
            arrays = [feats[k].cpu().numpy().astype(np_dtype) for k in keys]
        work.write_part(batch["index"], [i for i, _ in batch["bad"]], arrays)
        bar.update(len(batch["index"]) + len(batch["bad"]))
    bar.close()


def features(model: Extractor, images: torch.Tensor, ids: Sequence[Any],
             y: torch.Tensor | int | None, settings: FeatureSettings,
             stack_t: bool) -> dict[Key, torch.Tensor]:
    """{(t, block): pooled features (B, ...)} for one batch, averaged over ensemble draws."""
    x0 = model.prepare(images)
    b = x0.shape[0]
    if not model.has_timesteps:  # a reference network: one pass on the clean image
        feats = model.forward_intermediates(x0, None, list(settings.blocks), stop_early=True)
        return {(None, name): apply_pool(f, settings.pool, model.num_prefix_tokens).float()
                for name, f in feats.items()}
    ensemble = settings.ensemble or 1  # None only without timesteps, returned above
    draws = [(tt, k) for tt in settings.timesteps for k in range(ensemble)]

    def noised(tt, k):
        if not settings.add_noise:
            return x0
        assert settings.noise_seed is not None  # settings with noise always have its seed
        noise = per_sample_noise(x0.shape[1:], settings.noise_seed, ids, tt, k,
                                 device=x0.device, dtype=x0.dtype)
        return model.q_sample(x0, tt, noise)

    groups = [draws] if stack_t else [[d] for d in draws]
    out: dict[Key, torch.Tensor] = {}
    for group in groups:
        x = torch.cat([noised(tt, k) for tt, k in group])
        tvec = torch.cat([torch.full((b,), tt, device=x.device) for tt, _ in group])
        yy = y if not torch.is_tensor(y) else y.to(x.device).repeat(len(group))
        feats = model.forward_intermediates(x, tvec, list(settings.blocks), y=yy, stop_early=True)
        for j, (tt, _) in enumerate(group):
            for name, f in feats.items():
                pooled = apply_pool(f[j * b:(j + 1) * b], settings.pool,
                                    model.num_prefix_tokens).float()
                key = (tt, name)
                out[key] = out[key] + pooled if key in out else pooled
    return {k: v / ensemble for k, v in out.items()}
