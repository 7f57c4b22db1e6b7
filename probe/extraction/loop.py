"""The extraction loop: read a shard's batches, noise them, run the network up to the last
block asked for, pool, and write each batch as one part of the run folder."""
import numpy as np
import torch
from torch.utils.data import default_collate

from ..errors import ProbeError
from ..noise import per_sample_noise
from ..pooling import apply_pool

DTYPES = {"float32": np.float32, "float16": np.float16}


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        image, label = self.ds[i]
        return i, image, label, (self.ds.bad_reason(i) if image is None else None)

    def __getitems__(self, indices):  # the DataLoader's batched fetch
        if not hasattr(self.ds, "load_batch"):  # a dataset of the caller's own
            return [self[i] for i in indices]
        images = self.ds.load_batch(indices)
        return [(i, image, int(self.ds.labels[i]),
                 self.ds.bad_reason(i) if image is None else None)
                for i, image in zip(indices, images)]


def _collate(batch):
    good = [b for b in batch if b[1] is not None]
    return {
        "index": np.array([b[0] for b in good], dtype=np.int64),
        # torch.stack, but in a worker straight into shared memory: sending a plain tensor
        # copies it there, 0.5 ms per 256-px image (a tenth of its decoding and resizing)
        "images": default_collate([b[1] for b in good]) if good else None,
        "labels": torch.tensor([b[2] for b in good], dtype=torch.long),
        "bad": [(b[0], b[3]) for b in batch if b[1] is None],
    }


@torch.inference_mode()
def run_batches(model, data, todo, keys, work, settings, *, num_workers, device, stack_t,
                progress, shard_size):
    """Extract the batches ``todo`` (lists of dataset indices) into parts of ``work``."""
    from tqdm import tqdm

    if not todo:
        return
    loader = torch.utils.data.DataLoader(
        _Indexed(data), batch_sampler=todo, num_workers=num_workers, collate_fn=_collate,
        pin_memory=device.type == "cuda")
    np_dtype = DTYPES[settings["dtype"]]
    bar = tqdm(total=shard_size, initial=shard_size - sum(len(b) for b in todo), unit="img",
               disable=not progress, dynamic_ncols=True, desc="extract")
    for batch in loader:
        if batch["bad"] and not settings["skip_bad"]:
            i, reason = batch["bad"][0]
            raise ProbeError(f"cannot decode image {reason} — fix or remove it, or pass "
                             "--skip-bad to skip such images (they are recorded in the file)")
        arrays = []
        if batch["images"] is not None:
            ids = [data.ids[i] for i in batch["index"]]
            y = batch["labels"] if settings["class_label"] == "true" else settings["class_label"]
            feats = features(model, batch["images"].to(device, non_blocking=True), ids, y,
                             settings, stack_t)
            arrays = [feats[k].cpu().numpy().astype(np_dtype) for k in keys]
        work.write_part(batch["index"], [i for i, _ in batch["bad"]], arrays)
        bar.update(len(batch["index"]) + len(batch["bad"]))
    bar.close()


def features(model, images, ids, y, settings, stack_t):
    """{(t, block): pooled features (B, ...)} for one batch, averaged over ensemble draws."""
    x0 = model.prepare(images)
    b = x0.shape[0]
    if not model.has_timesteps:  # a reference network: one pass on the clean image
        feats = model.forward_intermediates(x0, None, settings["blocks"], stop_early=True)
        return {(None, name): apply_pool(f, settings["pool"], model.num_prefix_tokens).float()
                for name, f in feats.items()}
    draws = [(tt, k) for tt in settings["timesteps"] for k in range(settings["ensemble"])]

    def noised(tt, k):
        if not settings["add_noise"]:
            return x0
        noise = per_sample_noise(x0.shape[1:], settings["noise_seed"], ids, tt, k,
                                 device=x0.device, dtype=x0.dtype)
        return model.q_sample(x0, tt, noise)

    groups = [draws] if stack_t else [[d] for d in draws]
    out = {}
    for group in groups:
        x = torch.cat([noised(tt, k) for tt, k in group])
        tvec = torch.cat([torch.full((b,), tt, device=x.device, dtype=torch.long) for tt, _ in group])
        yy = y if not torch.is_tensor(y) else y.to(x.device).repeat(len(group))
        feats = model.forward_intermediates(x, tvec, settings["blocks"], y=yy, stop_early=True)
        for j, (tt, _) in enumerate(group):
            for name, f in feats.items():
                pooled = apply_pool(f[j * b:(j + 1) * b], settings["pool"],
                                    model.num_prefix_tokens).float()
                key = (tt, name)
                out[key] = out[key] + pooled if key in out else pooled
    return {k: v / settings["ensemble"] for k, v in out.items()}
