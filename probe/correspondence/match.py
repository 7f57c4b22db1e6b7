"""Matching keypoints between two feature maps: DIFT's protocol and its published variants.

Default (DIFT, eval_spair.py): both maps are upsampled bilinearly (``align_corners=False``,
``nn.Upsample``'s default) to their image's ORIGINAL size; the source vector is read at the
keypoint's pixel; the prediction is the argmax of the cosine similarity over the whole
upsampled target map.  The source vector is sampled with ``grid_sample`` at the pixel
centre, which gives the upsampled map's value without building the source map.

No channel is upsampled: bilinear upsampling is linear, so the K dot products with the
upsampled target are the upsampled (K, h, w) dot products with the small map, and each
pixel's squared norm is a quadratic form in its four grid neighbours, read from five
neighbour dot-product maps (:func:`cosine_map`).  Peak memory is (K + 12) x H x W floats
whatever the channel count; it agrees with upsampling the maps to float32 rounding.
``literal=True`` upsamples the maps themselves, in channel chunks of at most
``memory_mb`` (:func:`cosine_map_chunked`, peak ``(K + 1 + c) x H x W`` floats).

Options (:class:`MatchOptions`): ``method="mutual"`` keeps a match only when the target
point's own nearest neighbour in the source lies within one feature cell of the keypoint
(else the prediction is NaN and counts as wrong); ``method="soft"`` replaces the argmax by
a soft-argmax (softmax with temperature ``beta``) inside a window of ``window`` feature
cells around it (GeoAware-SC's SOFT_EVAL_WINDOW); ``upsample=False`` matches on the
feature grid and predicts the matched cell's centre (SD-DINO).  Several keys: each map is
L2-normalised per location first, then the channels are concatenated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ProbeError

METHODS = ("argmax", "mutual", "soft")
Size = tuple[int, int]  # (width, height) of an original image


@dataclass(frozen=True)
class MatchOptions:
    """How keypoints are matched (see the module docstring)."""
    method: str = "argmax"
    upsample: bool = True
    window: int = 7          # soft: half-width of the window in feature cells
    beta: float = 0.02       # soft: softmax temperature on cosine similarity
    literal: bool = False    # upsample the maps themselves (DIFT's arithmetic step by step)
    memory_mb: int = 256     # literal: bound on one upsampled channel chunk

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ProbeError(f"unknown matching method {self.method!r}: use one of "
                             f"{', '.join(METHODS)}")
        if self.method == "soft" and (self.window < 0 or self.beta <= 0):
            raise ProbeError("soft-argmax needs a window >= 0 and a temperature beta > 0")
        if self.memory_mb < 1:
            raise ProbeError(f"memory_mb must be at least 1, not {self.memory_mb}")

    def describe(self) -> str:
        s = f"{self.method}, {'upsampled to the original size' if self.upsample else 'on the feature grid'}"
        return s + (f", window {self.window} cells, beta {self.beta:g}" if self.method == "soft" else "")


def prepare_maps(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Maps (C, h, w) of one image, one per key: with several keys each is L2-normalised
    per location so that every key weighs the same in the concatenation."""
    if len(maps) == 1:
        return [maps[0].float()]
    return [F.normalize(m.float(), dim=0) for m in maps]


def _pixel_grid(pts: torch.Tensor, size: Size) -> torch.Tensor:
    """Pixel coordinates (K, 2) -> grid_sample coordinates of those pixels' centres in an
    image of ``size`` (align_corners=False): the same for every map resolution."""
    w, h = size
    g = torch.stack([(2 * pts[:, 0] + 1) / w - 1, (2 * pts[:, 1] + 1) / h - 1], dim=-1)
    return g.view(1, 1, -1, 2)


def sample_vectors(maps: Sequence[torch.Tensor], pts: torch.Tensor, size: Size) -> torch.Tensor:
    """(K, sum C) values of the maps upsampled to ``size`` at integer pixels ``pts``."""
    grid = _pixel_grid(pts.to(maps[0].dtype), size)
    out = [F.grid_sample(m[None], grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0, :, 0].T for m in maps]
    return torch.cat(out, dim=1)


def cosine_map_chunked(vectors: torch.Tensor, maps: Sequence[torch.Tensor], size: Size,
                       memory_mb: int = 256) -> torch.Tensor:
    """(K, H*W) cosine similarity of each vector with every pixel of the maps upsampled to
    ``size`` = (W, H): DIFT's arithmetic literally, the maps upsampled in channel chunks of
    at most ``memory_mb``."""
    w, h = size
    sim = vectors.new_zeros(vectors.shape[0], h * w)
    norm2 = vectors.new_zeros(h * w)
    step = max(1, (memory_mb << 20) // (4 * h * w))
    c0 = 0
    for m in maps:
        for a in range(0, m.shape[0], step):
            b = min(a + step, m.shape[0])
            up = F.interpolate(m[None, a:b], size=(h, w), mode="bilinear",
                               align_corners=False)[0].reshape(b - a, h * w)
            sim.addmm_(vectors[:, c0 + a:c0 + b], up)
            norm2.add_((up * up).sum(0))
            del up
        c0 += m.shape[0]
    return _cosine(sim, norm2, vectors)


def _cosine(sim: torch.Tensor, norm2: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    # F.normalize's eps: a zero vector has similarity 0, as in DIFT
    vnorm = vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return sim.div_(vnorm).div_(norm2.clamp_min(0).sqrt().clamp_min(1e-12))


def cosine_map(vectors: torch.Tensor, maps: Sequence[torch.Tensor], size: Size,
               memory_mb: int = 256) -> torch.Tensor:
    """The same cosine map as :func:`cosine_map_chunked` without upsampling any channel
    (``memory_mb`` is not needed: peak memory is (K + 12) x H x W floats plus 5 maps of
    the feature grid).  Bilinear upsampling is linear, so the dot products are the
    upsampled (K, h, w) dot products with the small map; each pixel's squared norm is a
    quadratic form in its four grid neighbours, read from five neighbour dot-product maps
    of the small map."""
    w, h = size
    sim = vectors.new_zeros(vectors.shape[0], h, w)
    norm2 = vectors.new_zeros(h, w)
    c0 = 0
    for m in maps:
        c, mh, mw = m.shape
        s = (vectors[:, c0:c0 + c] @ m.reshape(c, -1)).view(-1, mh, mw)
        sim += F.interpolate(s[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        norm2 += _upsampled_norm2(m, h, w)
        c0 += c
    return _cosine(sim.view(sim.shape[0], -1), norm2.view(-1), vectors)


def _axis(n_in: int, n_out: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Bilinear (align_corners=False) source indices and weights along one axis, as
    torch's upsampling computes them."""
    d = torch.arange(n_out, device=like.device, dtype=like.dtype)
    src = ((d + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    w1 = src - i0.to(src.dtype)
    return i0, (i0 + 1).clamp(max=n_in - 1), 1 - w1, w1


def _upsampled_norm2(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(h, w) squared norms of m (C, mh, mw) upsampled to (h, w), without upsampling it."""
    p = F.pad(m[None], (0, 1, 0, 1), mode="replicate")[0]
    a, r, d, dr = p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]
    nn, hh, vv = (a * a).sum(0), (a * r).sum(0), (a * d).sum(0)
    diag = (a * dr).sum(0) + (r * d).sum(0)
    i0, i1, y0, y1 = _axis(m.shape[1], h, m)
    j0, j1, x0, x1 = _axis(m.shape[2], w, m)

    def at(g: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return g[i][:, j]

    yy0, yy1, yy01 = (y0 * y0)[:, None], (y1 * y1)[:, None], (y0 * y1)[:, None]
    xx0, xx1, xx01 = (x0 * x0)[None], (x1 * x1)[None], (x0 * x1)[None]
    return (yy0 * xx0 * at(nn, i0, j0) + yy0 * xx1 * at(nn, i0, j1)
            + yy1 * xx0 * at(nn, i1, j0) + yy1 * xx1 * at(nn, i1, j1)
            + 2 * xx01 * (yy0 * at(hh, i0, j0) + yy1 * at(hh, i1, j0))
            + 2 * yy01 * (xx0 * at(vv, i0, j0) + xx1 * at(vv, i0, j1))
            + 2 * yy01 * xx01 * at(diag, i0, j0))


def _stride(maps: Sequence[torch.Tensor], size: Size) -> float:
    """Original pixels per feature cell (the coarsest key's)."""
    return max(max(size[0] / m.shape[-1], size[1] / m.shape[-2]) for m in maps)


def _soft_argmax(cos: torch.Tensor, size: Size, radius: float, beta: float) -> torch.Tensor:
    w, h = size
    idx = cos.argmax(dim=1)
    y0, x0 = (idx // w).float(), (idx % w).float()
    ys = torch.arange(h, device=cos.device, dtype=cos.dtype).repeat_interleave(w)
    xs = torch.arange(w, device=cos.device, dtype=cos.dtype).repeat(h)
    inside = ((ys[None] - y0[:, None]).abs() <= radius) & ((xs[None] - x0[:, None]).abs() <= radius)
    logits = (cos / beta).masked_fill(~inside, float("-inf"))
    p = torch.softmax(logits, dim=1)
    return torch.stack([p @ xs, p @ ys], dim=1)


def _argmax_xy(cos: torch.Tensor, width: int) -> torch.Tensor:
    idx = cos.argmax(dim=1)
    return torch.stack([idx % width, idx // width], dim=1).to(cos.dtype)


def match_upsampled(src: Sequence[torch.Tensor], trg: Sequence[torch.Tensor], kps: torch.Tensor,
                    src_size: Size, trg_size: Size, options: MatchOptions) -> torch.Tensor:
    """Predicted target points (K, 2) for source keypoints ``kps`` (K, 2), maps upsampled to
    the images' original sizes."""
    pix = kps.round().clamp_min(0)
    pix = torch.minimum(pix, torch.tensor([src_size[0] - 1, src_size[1] - 1], dtype=pix.dtype,
                                          device=pix.device))
    vec = sample_vectors(src, pix, src_size)
    cosines = cosine_map_chunked if options.literal else cosine_map
    cos = cosines(vec, trg, trg_size, options.memory_mb)
    if options.method == "soft":
        return _soft_argmax(cos, trg_size, options.window * _stride(trg, trg_size), options.beta)
    pred = _argmax_xy(cos, trg_size[0])
    del cos
    if options.method == "mutual":
        back = cosines(sample_vectors(trg, pred, trg_size), src, src_size, options.memory_mb)
        dist = (_argmax_xy(back, src_size[0]) - pix).norm(dim=1)
        pred[dist > _stride(src, src_size)] = float("nan")
    return pred


def _on_grid(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Keys laid on the first key's grid and concatenated: (C, h, w)."""
    h, w = maps[0].shape[-2:]
    return torch.cat([m if m.shape[-2:] == (h, w) else
                      F.interpolate(m[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                      for m in maps], dim=0)


def match_grid(src: Sequence[torch.Tensor], trg: Sequence[torch.Tensor], kps: torch.Tensor,
               src_size: Size, trg_size: Size, options: MatchOptions) -> torch.Tensor:
    """Without upsampling: the keypoint's cell against every target cell; the prediction is
    the matched cell's centre in original pixels."""
    s, t = _on_grid(src), _on_grid(trg)
    (hs, ws), (ht, wt) = s.shape[-2:], t.shape[-2:]
    col = ((kps[:, 0] + 0.5) * ws / src_size[0]).floor().clamp(0, ws - 1).long()
    row = ((kps[:, 1] + 0.5) * hs / src_size[1]).floor().clamp(0, hs - 1).long()
    vec = F.normalize(s[:, row, col].T, dim=1)
    cos = vec @ F.normalize(t.reshape(t.shape[0], -1), dim=0)
    if options.method == "soft":
        cell = _soft_argmax(cos, (wt, ht), options.window, options.beta)
    else:
        cell = _argmax_xy(cos, wt)
        if options.method == "mutual":
            back = F.normalize(t.reshape(t.shape[0], -1)[:, cell[:, 1].long() * wt
                                                        + cell[:, 0].long()].T, dim=1)
            rc = _argmax_xy(back @ F.normalize(s.reshape(s.shape[0], -1), dim=0), ws)
            cell[(rc[:, 0] != col) | (rc[:, 1] != row)] = float("nan")
    scale = torch.tensor([trg_size[0] / wt, trg_size[1] / ht], dtype=cell.dtype, device=cell.device)
    return (cell + 0.5) * scale - 0.5


def match_pair(src_maps: Sequence[torch.Tensor], trg_maps: Sequence[torch.Tensor],
               kps: np.ndarray | torch.Tensor, src_size: Size, trg_size: Size,
               options: MatchOptions = MatchOptions()) -> np.ndarray:
    """Predicted target points (K, 2) as (x, y) in the target's original pixels (NaN: a
    match that ``mutual`` rejected).  Maps: one (C, h, w) tensor per key, on the device
    the matching runs on; ``kps``: source keypoints in original pixels."""
    src, trg = prepare_maps(src_maps), prepare_maps(trg_maps)
    k = torch.as_tensor(np.asarray(kps, dtype=np.float32), device=src[0].device)
    fn = match_upsampled if options.upsample else match_grid
    with torch.no_grad():
        return fn(src, trg, k, src_size, trg_size, options).cpu().numpy().astype(np.float64)
