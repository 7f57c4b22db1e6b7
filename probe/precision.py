"""Mixed precision: which precision the network's forward runs in, and the parts that stay
float32 whatever it is.

``fp32`` runs everything in float32.  ``bf16`` and ``fp16`` run the network's forward under
:func:`torch.autocast` (matmuls and convolutions in the low precision, reductions as torch's
autocast lists say), while these stay float32 by construction:

- the input pipeline (:meth:`Extractor.prepare`: the VAE encoder of latent models; an
  fp16 VAE is known to overflow into NaNs) and the noise arithmetic (``q_sample``): the
  pipeline calls both outside autocast;
- the sinusoidal timestep embeddings (:func:`full_precision` in
  :mod:`probe.extractors.embeddings`): ``cos(999 * f)`` in bf16 is wrong in the 1st digit;
- the modules a family names in :meth:`Extractor.fp32_modules` (wrapped by
  :func:`keep_fp32`).

Features are stored in ``--dtype`` whatever the precision.  Every block output is checked
to be finite (:func:`check_finite`): a low-precision overflow stops the run with a one-line
error instead of writing NaNs.
"""
from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Iterator

from .errors import ProbeError

if TYPE_CHECKING:
    import torch
    from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
_ALIASES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
            "fp16": "fp16", "float16": "fp16", "half": "fp16"}
AUTOCAST_DEVICES = ("cpu", "cuda")

__all__ = ["AUTOCAST_DEVICES", "PRECISIONS", "autocast", "check_finite", "full_precision",
           "keep_fp32", "parse_precision", "torch_dtype"]


def parse_precision(precision: str | None) -> str:
    """'fp32', 'bf16' or 'fp16' (also spelled float32, bfloat16, float16/half); None: fp32."""
    if precision is None:
        return "fp32"
    name = _ALIASES.get(str(precision).lower())
    if name is None:
        raise ProbeError(f"bad --precision {precision!r}: use fp32, bf16 or fp16")
    return name


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16,
            "fp16": torch.float16}[parse_precision(precision)]


def check_device(precision: str, device: torch.device) -> None:
    """Refuse a low precision on a device autocast does not cover (mps, meta ...)."""
    import torch

    precision = parse_precision(precision)
    if precision == "fp32":
        return
    if device.type not in AUTOCAST_DEVICES or not torch.amp.is_autocast_available(device.type):
        raise ProbeError(f"--precision {precision} needs autocast, which probe uses on cpu and "
                         f"cuda only, not on {device.type}: use --precision fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ProbeError("--precision bf16: this GPU has no bfloat16 support (it needs "
                         "compute capability 8.0, Ampere or later): use --precision fp16")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context the network's forward runs in: nothing for fp32, else torch.autocast
    for the device's type in the precision's dtype."""
    import torch

    precision = parse_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    check_device(precision, device)
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch_dtype(precision)))
    if device.type == "cpu" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        # torch 2.14's CPU flash attention picks its AMX bf16/fp16 path from the hardware
        # but then refuses it when ATen's kernels are limited below AVX-512
        # (ATEN_CPU_CAPABILITY=default or avx2): "pack_vnni2 is only supported when avx512
        # is supported".  The math backend computes the same attention.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


@contextlib.contextmanager
def full_precision(device: torch.device | str) -> Iterator[None]:
    """Switch autocast off inside, if it is on for ``device``: what runs here keeps the
    dtype of its inputs (float32)."""
    import torch

    kind = torch.device(device).type
    if kind in AUTOCAST_DEVICES and torch.is_autocast_enabled(kind):
        with torch.autocast(kind, enabled=False):
            yield
    else:
        yield


def keep_fp32(module: nn.Module) -> nn.Module:
    """Make ``module`` run in float32 under autocast: autocast off inside its forward and
    its floating-point tensor inputs cast to its parameters' dtype (float32 unless the
    caller stored the weights in another dtype).  The weights and state dict do not change;
    forward hooks still see the output.  Idempotent."""
    import torch

    if getattr(module, "_probe_keeps_fp32", False):
        return module
    inner = module.forward
    params = [p for p in module.parameters() if p.is_floating_point()]

    def cast(v: Any, dtype: torch.dtype) -> Any:
        return v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        tensors = [v for v in (*args, *kwargs.values()) if torch.is_tensor(v)]
        kind = tensors[0].device.type if tensors else "cpu"
        if kind not in AUTOCAST_DEVICES or not torch.is_autocast_enabled(kind):
            return inner(*args, **kwargs)
        dtype = params[0].dtype if params else torch.float32
        with torch.autocast(kind, enabled=False):
            return inner(*(cast(a, dtype) for a in args),
                         **{k: cast(v, dtype) for k, v in kwargs.items()})

    module.forward = forward
    module._probe_keeps_fp32 = True  # type: ignore[assignment]
    return module


def check_finite(feats: dict[str, torch.Tensor], t: float | str | None, precision: str,
                 block_ids: dict[str, int]) -> None:
    """Raise a one-line ProbeError naming the first block (in forward order) whose output
    holds a NaN or an infinity; one ``isfinite().all()`` per block, a pass over its output."""
    import torch

    for name, f in feats.items():
        if not bool(torch.isfinite(f).all()):
            where = f"block {name} (id {block_ids.get(name, '?')})"
            at = f" at t={t}" if t is not None else ""
            hint = ("the network overflowed float16's range: use --precision bf16 or fp32"
                    if precision == "fp16" else
                    "the features are not finite: check the weights, or use --precision fp32"
                    if precision != "fp32" else
                    "check the weights and the input data")
            raise ProbeError(f"{where}{at} produced NaN or inf features under --precision "
                             f"{precision}; nothing was written for this batch: {hint}")
