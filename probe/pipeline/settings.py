"""What a feature file's features depend on, as one typed object.

:class:`FeatureSettings` is built once by :func:`probe.extract`, carried down to the loop
and :func:`~probe.pipeline.loop.features`, written to the run folder's ``settings.json``
(a resumed run must match it) and stored in the finished file as root attributes, once:
each field is one attribute (see the README's table).  A network without timesteps has no
noise: its settings and its file hold no ``noise_seed``, ``ensemble`` or ``add_noise``.

Files written before this layout also hold a ``settings`` attribute (a JSON copy of the
same fields) and the noise fields of networks without timesteps; they read the same.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..selection import t_value
from ..store import NOISE_ATTRS as NOISE_FIELDS
# stored as plain strings: never JSON-decoded (a data spec or hash could look like JSON)
_STR_FIELDS = ("model", "weights_sha256", "pool", "dtype", "data", "split", "transform")


@dataclass(frozen=True)
class FeatureSettings:
    """The settings a run's features depend on (compared on resume, recorded in the file).
    ``num_samples``: images read, after ``--limit`` (the file's ``num_samples`` attribute
    counts the rows stored, without the skipped ones).  The noise fields are None for a
    network without timesteps (``timesteps`` is then empty)."""

    model: str
    weights_sha256: str
    timesteps: tuple[int | float, ...]
    blocks: tuple[str, ...]
    pool: str
    dtype: str
    class_label: int | str | None
    data: str
    split: str
    num_samples: int
    image_size: int
    transform: str
    skip_bad: bool
    noise_seed: int | None = None
    ensemble: int | None = None
    add_noise: bool | None = None
    # bf16/fp16 features differ from fp32 ones in the 3rd digit: never resumed together
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "timesteps", tuple(t_value(t) for t in self.timesteps))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.timesteps:  # no timestep, no noise: these would mean nothing
            for name in NOISE_FIELDS:
                object.__setattr__(self, name, None)

    @property
    def has_timesteps(self) -> bool:
        return bool(self.timesteps)

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON values (lists for tuples), without the noise fields of a
        network without timesteps."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["timesteps"], d["blocks"] = list(self.timesteps), list(self.blocks)
        if not self.has_timesteps:
            for name in NOISE_FIELDS:
                del d[name]
        return d

    def replace(self, **changes: Any) -> FeatureSettings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FeatureSettings | None:
        """Settings from :meth:`as_dict` (or an older run's JSON); None if ``d`` is not
        settings at all."""
        if not isinstance(d, Mapping):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError:  # a field missing: settings of another version
            return None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> FeatureSettings | None:
        """The settings recorded in a feature file's root attributes (as h5py returns
        them), or None if they are not all there."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in attrs:
                d[f.name] = _decode(f.name, attrs[f.name])
        if "num_samples" in d:  # the file counts the rows stored, the settings the images read
            d["num_samples"] += int(_decode("num_skipped", attrs.get("num_skipped", 0)))
        return cls.from_dict(d)


def _decode(name: str, v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, str) and name not in _STR_FIELDS:
        if name == "class_label":  # "true" is a string there, not JSON's true
            return None if v == "null" else v
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v
