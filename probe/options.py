"""Options that travel together, as frozen dataclasses shared by every command.

- :class:`NoiseOptions`: how images are noised before the network sees them (``extract``).
- :class:`RunOptions`: where and how a command runs (device, threads, batches, progress);
  none of them changes a result.
- :class:`OutputOptions`: where the output goes and whether to replace it.
- :class:`Selection`: which (t, block) keys of a feature file (:mod:`probe.selection`).

The dataclass fields are the one source of defaults: a function takes the object, or the
same names as keywords (``extract(model, t=10, add_noise=False)``), which
:func:`gather` folds into it.  ``None`` in a field means "the command's own default"
(each command says which).  The CLI builds the objects from the shared flags of
:mod:`probe.cli.common`, so a flag means the same thing in every command.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ProbeError, suggest
from .selection import Spec

__all__ = ["NoiseOptions", "RunOptions", "OutputOptions", "Selection", "gather", "selections",
           "refuse_unknown"]


@dataclass(frozen=True)
class NoiseOptions:
    """``t``: timesteps (:mod:`probe.selection`; None: 100 for a diffusion model, none for a
    network without timesteps).  ``ensemble``: average the features over K noise draws.
    ``add_noise``: False conditions on t without noising (the l-DAE clean-input probe).
    ``noise_seed``: the noise of each sample is drawn from (seed, sample id, t, draw).
    ``class_label``: None for the model's null class, an int for one class, or "true" for
    each image's true label (leaks labels)."""

    t: Spec = None
    ensemble: int = 1
    add_noise: bool = True
    noise_seed: int = 0
    class_label: int | str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ensemble, bool) or int(self.ensemble) < 1:
            raise ProbeError(f"--ensemble must be at least 1, not {self.ensemble}")
        label = self.class_label
        if label is not None and label != "true":
            try:
                object.__setattr__(self, "class_label", int(label))
            except (TypeError, ValueError):
                raise ProbeError(f"bad class label {label!r}: give a class index, or 'true' "
                                 "for each image's own label") from None
        object.__setattr__(self, "ensemble", int(self.ensemble))
        object.__setattr__(self, "noise_seed", int(self.noise_seed))
        object.__setattr__(self, "add_noise", bool(self.add_noise))


@dataclass(frozen=True)
class RunOptions:
    """``device``: cpu, cuda, cuda:N or auto (None: the command's default; auto is CUDA
    when there is a GPU).  ``threads``: CPU threads for torch (None: one per core).
    ``batch_size``: samples per forward pass (None: the command's default).
    ``num_workers``: DataLoader processes reading images, or ``auto`` (min(8, cores) on
    CUDA, 0 on the CPU).  ``progress``: show bars.  ``precision``: fp32, or bf16/fp16
    autocast for the network's forward (:mod:`probe.precision`).  ``compile``:
    torch.compile the blocks (pays compile time on the first batch)."""

    device: Any = None  # str, torch.device or None
    threads: int | None = None
    batch_size: int | None = None
    num_workers: int | str = "auto"
    progress: bool = True
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and (isinstance(self.batch_size, bool)
                                            or int(self.batch_size) < 1):
            raise ProbeError(f"--batch-size must be a positive integer, not {self.batch_size}")
        from .pipeline.gpu import parse_num_workers
        from .precision import parse_precision

        object.__setattr__(self, "num_workers", parse_num_workers(self.num_workers))
        object.__setattr__(self, "precision", parse_precision(self.precision))
        if self.threads is not None and int(self.threads) < 1:
            raise ProbeError(f"--threads must be a positive integer, not {self.threads}")

    def with_defaults(self, **defaults: Any) -> RunOptions:
        """A copy where the fields left None take the command's ``defaults``."""
        return dataclasses.replace(self, **{k: v for k, v in defaults.items()
                                            if getattr(self, k) is None})

    def use_threads(self) -> None:
        """Set torch's CPU threads for this process, if ``threads`` is given."""
        if self.threads is not None:
            from .device import set_threads

            set_threads(self.threads)


@dataclass(frozen=True)
class OutputOptions:
    """``out``: the output path (None: the command's default name).  ``overwrite``:
    replace an existing output (without it an existing output is refused, or a matching
    unfinished run resumed).  ``dtype``: the stored features' dtype (float32 or float16)."""

    out: Any = None  # str, os.PathLike or None
    overwrite: bool = False
    dtype: str = "float32"

    def refuse_dtype(self, command: str) -> None:
        """A ProbeError when ``dtype`` is set for a command that writes no features."""
        if self.dtype != OutputOptions.dtype:
            raise ProbeError(f"{command} writes no features: dtype does not apply to it")


@dataclass(frozen=True)
class Selection:
    """Keys of a feature file: ``t`` x ``blocks``, or explicit ``keys`` (the grammar of
    :mod:`probe.selection`; None: not given, which each command reads as it documents)."""

    t: Spec = None
    blocks: Spec = None
    keys: Spec = None

    def as_tuple(self) -> tuple[Spec, Spec, Spec]:
        return self.t, self.blocks, self.keys


_T = TypeVar("_T")


def gather(cls: type[_T], given: _T | None, kwargs: dict[str, Any]) -> _T:
    """``given`` (or the defaults of ``cls``) with the fields named in ``kwargs`` replaced;
    those names are taken out of ``kwargs``, so what is left is for someone else."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    mine = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    if given is None:
        return cls(**mine)
    if not isinstance(given, cls):
        raise ProbeError(f"expected a {cls.__name__}, not {type(given).__name__}")
    return dataclasses.replace(given, **mine) if mine else given  # type: ignore[type-var]


def selections(rows: Selection | None, cols: Selection | None,
               kwargs: dict[str, Any]) -> tuple[Selection, Selection]:
    """The row and column selections of a two-file command: ``t``, ``blocks``, ``keys``
    in ``kwargs`` go to the rows, ``t_b``, ``blocks_b``, ``keys_b`` to the columns (taken
    out of ``kwargs``)."""
    names = [f.name for f in dataclasses.fields(Selection)]
    col_kw = {n: kwargs.pop(n + "_b") for n in names if n + "_b" in kwargs}
    return gather(Selection, rows, kwargs), gather(Selection, cols, col_kw)


def refuse_unknown(kwargs: dict[str, Any], *known: type, also: tuple[str, ...] = ()) -> None:
    """A ProbeError naming the first keyword that no option class in ``known`` has."""
    if kwargs:
        names = {f.name for cls in known for f in dataclasses.fields(cls)} | set(also)
        name = sorted(kwargs)[0]
        raise ProbeError(f"unknown option {name!r}{suggest(name, names)}")
