"""The extraction loop: read a shard's batches, noise them, run the network up to the last
block asked for (under autocast for ``--precision bf16|fp16``), check the block outputs are
finite, pool, and write each batch as one part of the run folder."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..data.indexed import Indexed, Item
from ..errors import ProbeError
from ..precision import autocast, check_finite
from .gpu import loader_options
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
        # torch.stack, but in a worker straight into shared memory: sending a plain tensor
        # copies it there, 0.5 ms per 256-px image (a tenth of its decoding and resizing)
        "images": torch.utils.data.default_collate([b[1] for b in good]) if good else None,
        "labels": torch.tensor([b[2] for b in good], dtype=torch.long),
        "bad": [(b[0], b[3]) for b in batch if b[1] is None],
    }


@torch.inference_mode()
def run_batches(model: Extractor, data: Any, todo: list[list[int]], keys: Sequence[Key],
                work: Workdir, settings: FeatureSettings, *, num_workers: int,
                device: torch.device, stack_t: bool, progress: bool, shard_size: int,
                channels_last: bool = False) -> None:
    """Extract the batches ``todo`` (lists of dataset indices) into parts of ``work``.
    A batch whose features are not finite raises before its part is written."""
    from tqdm import tqdm

    if not todo:
        return
    loader = torch.utils.data.DataLoader(
        Indexed(data), batch_sampler=todo, collate_fn=_collate,
        **loader_options(num_workers, device))
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
            images = batch["images"].to(device, non_blocking=True)  # pinned: asynchronous
            feats = features(model, images, ids, y, settings, stack_t, channels_last)
            arrays = [feats[k].cpu().numpy().astype(np_dtype) for k in keys]
        work.write_part(batch["index"], [i for i, _ in batch["bad"]], arrays)
        bar.update(len(batch["index"]) + len(batch["bad"]))
    bar.close()


def features(model: Extractor, images: torch.Tensor, ids: Sequence[Any],
             y: torch.Tensor | int | None, settings: FeatureSettings,
             stack_t: bool, channels_last: bool = False) -> dict[Key, torch.Tensor]:
    """{(t, block): pooled features (B, ...)} for one batch, averaged over ensemble draws.
    ``prepare`` and the noising run in float32, the network in ``settings.precision``."""
    x0 = model.prepare(images)
    b = x0.shape[0]
    precision = settings.precision

    def run(x: torch.Tensor, tvec: torch.Tensor | None,
            yy: torch.Tensor | int | None = None) -> dict[str, torch.Tensor]:
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, x.device):
            return model.forward_intermediates(x, tvec, list(settings.blocks), y=yy,
                                               stop_early=True)

    ids_of = {name: model.block_id(name) for name in settings.blocks}
    if not model.has_timesteps:  # a reference network: one pass on the clean image
        feats = run(x0, None)
        check_finite(feats, None, precision, ids_of)
        return {(None, name): apply_pool(f.float(), settings.pool, model.num_prefix_tokens)
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
        feats = run(x, tvec, yy)
        check_finite(feats, group[0][0] if len(group) == 1 else
                     ",".join(str(tt) for tt, _ in group), precision, ids_of)
        for j, (tt, _) in enumerate(group):
            for name, f in feats.items():
                # pooled in float32: a bf16 mean would round the features to 8 bits
                pooled = apply_pool(f[j * b:(j + 1) * b].float(), settings.pool,
                                    model.num_prefix_tokens)
                key = (tt, name)
                out[key] = out[key] + pooled if key in out else pooled
    return {k: v / ensemble for k, v in out.items()}
