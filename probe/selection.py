"""Which features: one grammar for timesteps and blocks, in every command and the API.

- ``t``: a number, a comma list (``"10,100"``), a list of these (a repeated ``--t``),
  or ``"all"`` / None.  DDPM families take integer steps; continuous-time families (SiT,
  REPA) take t in [0, 1] such as ``0.1``.  A t is an int when it is integral and a float
  otherwise, and is written the same way everywhere (:func:`t_text`): ``t100``, ``t0.1``.
- ``blocks``: block names, 1-based ids in the model's forward order, comma lists of
  these, a list of these (a repeated ``--blocks``), or ``"all"`` / None.
- ``keys``: explicit (t, block) pairs, ``"tT/BLOCK"`` (BLOCK a name or an id),
  comma-separated; ``"tT"`` alone means every block at T and ``"BLOCK"`` alone that
  block at every t.

Networks without a timestep (reference networks that see the clean image: timm,
torchvision) have keys ``(None, block)``, labelled by the bare block name
(:func:`key_label`); their files take ``--blocks`` and ``--keys BLOCK`` but no ``--t``.

- ``LogSNR(values)`` in place of ``t`` (``--logsnr X``): the t at log-SNR
  log(α_t²/σ_t²) = X, the one noise axis across families.  Extraction resolves it against
  the model's schedule; a reader against the noise table its file records
  (:func:`nearest_log_snr`, which logs the t taken and the log-SNR reached).

Ids always count in the model's full block list: a feature file records that list
(``model_blocks``), so ``--blocks 2`` names the same block in ``probe extract`` and in
every command that reads the file.  Errors list what exists.
"""
from __future__ import annotations

import math
import numbers
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union, cast

from .errors import ProbeError, suggest

Key = tuple  # (t: int | float, block: str), or (None, block) for a network without timesteps
Spec = Union[None, str, int, float, "LogSNR", Sequence[Union[str, int, float]]]

ALL = "all"
_NUMBER = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_KEY = re.compile(rf"t({_NUMBER})/(.+)")
_T = re.compile(rf"t({_NUMBER})")


@dataclass(frozen=True)
class LogSNR:
    """Timesteps named by log-SNR instead of t (``--logsnr -2,0``)."""

    values: tuple[float, ...]

    @classmethod
    def parse(cls, spec: Any) -> "LogSNR":
        """From a number, a comma list or a list of these (a repeated ``--logsnr``)."""
        words = _words(spec) or []
        try:
            values = tuple(float(w) for w in words)
        except (TypeError, ValueError):
            raise ProbeError(f"bad --logsnr {spec!r}: give log-SNR values as numbers, e.g. "
                             "--logsnr -2 or --logsnr -4,0,4") from None
        if not values or any(math.isnan(v) for v in values):
            raise ProbeError("no log-SNR given: use e.g. --logsnr 0 or --logsnr -4,0,4")
        return cls(values)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def nearest_log_snr(levels: Mapping[Any, float], logsnr: float, bounds: Sequence[float],
                    owner: str, log: Callable[[str], Any] = _stderr) -> int | float:
    """The t (a key of ``levels``, t -> its log-SNR) of log-SNR nearest ``logsnr``, logged
    with the log-SNR reached; a ``logsnr`` outside ``bounds`` (lo, hi) is a ProbeError."""
    lo, hi = bounds
    if not lo <= logsnr <= hi:
        raise ProbeError(f"log-SNR {logsnr:g} is outside {owner}'s range [{lo:.4g}, {hi:.4g}]: "
                         "give --logsnr within it")
    t = min(levels, key=lambda k: (abs(levels[k] - logsnr), t_value(k)))
    log(f"{owner}: --logsnr {logsnr:g} -> t={t_text(t)} (log-SNR {levels[t]:.4g})")
    return t_value(t)


def t_value(t: Any) -> int | float:
    """A timestep as probe holds it: an int when integral (DDPM steps, and 0 or 1 of a
    continuous t), else a float."""
    if isinstance(t, bool):
        raise ProbeError(f"bad timestep {t!r}")
    if isinstance(t, numbers.Integral):
        return int(t)
    v = float(t)
    return int(v) if v.is_integer() else v


def t_text(t: Any) -> str:
    """The one way a timestep is written, in key labels, HDF5 paths and noise seeds:
    ``100``, ``0.1`` (Python's shortest round-trip form of the float)."""
    v = t_value(t)
    return str(v) if isinstance(v, int) else repr(v)


def _words(spec: Spec) -> list | None:
    """A spec as a flat list of words; None for 'all' (or nothing given)."""
    if spec is None:
        return None
    one = isinstance(spec, (str, numbers.Real, tuple))  # a tuple is one (t, block) key
    items: list = [spec] if one else list(cast(Iterable, spec))
    words: list = []
    for item in items:
        if isinstance(item, str):
            words += [w.strip() for w in item.split(",") if w.strip()]
        else:
            words.append(item)
    if any(isinstance(w, str) and w.lower() == ALL for w in words):
        return None
    return words


def parse_t(spec: Spec) -> list[int | float] | None:
    """Timesteps (:func:`t_value`), sorted and unique; None for all."""
    if isinstance(spec, LogSNR):
        raise ProbeError("--logsnr is resolved against a schedule or a file's noise table, "
                         "not read as timesteps")
    words = _words(spec)
    if words is None:
        return None
    out = []
    for w in words:
        text = str(w).strip().lower()
        # a negative value parses: the schedule says what its range is
        if isinstance(w, bool) or not re.fullmatch(rf"t?{_NUMBER}", text):
            raise ProbeError(f"bad --t {w!r}: give timesteps as numbers, e.g. --t 10,100 (DDPM "
                             "steps), --t 0.1 (SiT's continuous t) or --t all")
        out.append(t_value(float(text.lstrip("t")) if re.search(r"[.e]", text)
                           else int(text.lstrip("t"))))
    if not out:
        raise ProbeError("no timesteps given: use e.g. --t 100, --t 10,100 or --t all")
    return sorted(set(out))


def t_from_text(text: str) -> int | float:
    """The number after ``t`` in a key label, back to its :func:`t_value`."""
    return t_value(float(text) if re.search(r"[.eE]", text) else int(text))


def _is_id(w) -> bool:
    if isinstance(w, bool):
        return False
    return isinstance(w, numbers.Integral) or (isinstance(w, str) and w.isdigit())


def block_list(names: Sequence[str]) -> str:
    """Every name with its id, runs of numbered names folded:
    'input_blocks.0..11 (ids 1-12), middle_block (13)'."""
    out, i = [], 0
    while i < len(names):
        prefix, _, num = names[i].rpartition(".")
        j = i
        while (num.isdigit() and j + 1 < len(names)
               and names[j + 1] == f"{prefix}.{int(num) + j + 1 - i}"):
            j += 1
        if j - i >= 2:
            out.append(f"{names[i]}..{names[j].rpartition('.')[2]} (ids {i + 1}-{j + 1})")
        else:
            out += [f"{names[k]} ({k + 1})" for k in range(i, j + 1)]
        i = j + 1
    return ", ".join(out)


def resolve_block(word: str | int, names: Sequence[str], owner: str, hint: str) -> str:
    """One block word (a name or a 1-based id into ``names``) -> its name."""
    if _is_id(word):
        i = int(word)
        if not 1 <= i <= len(names):
            raise ProbeError(f"block id {i} is out of range: {owner} has blocks 1..{len(names)}: "
                             f"{block_list(names)} ({hint})")
        return names[i - 1]
    word = str(word)
    if word not in names:
        raise ProbeError(f"{owner} has no block {word!r}{suggest(word, names)}; it has "
                         f"{block_list(names)} ({hint})")
    return word


def resolve_blocks(spec: Spec, names: Sequence[str], owner: str, hint: str) -> list[str]:
    """Block names for ``spec`` (see the module doc), in the order given, without repeats;
    all of ``names`` for 'all'."""
    words = _words(spec)
    if words is None:
        return list(names)
    if not words:
        raise ProbeError(f"no blocks given for {owner}: give names, ids or 'all' ({hint})")
    return list(dict.fromkeys(resolve_block(w, names, owner, hint) for w in words))


def key_label(key: Key) -> str:
    """The one way a key is written, in files, plots, tables and messages: 'tT/BLOCK', or
    the bare block name for a network without timesteps (t None)."""
    t, block = key
    return str(block) if t is None else f"t{t_text(t)}/{block}"


def parse_key(key: str | Key) -> Key:
    """'t100/output_blocks.4' or (100, 'output_blocks.4') -> (100, 'output_blocks.4');
    a bare block name 'stages.2' or (None, 'stages.2') -> (None, 'stages.2') (no t)."""
    if isinstance(key, tuple) and len(key) == 2:
        return (None if key[0] is None else t_value(key[0])), str(key[1])
    text = str(key).strip()
    m = _KEY.fullmatch(text)
    if m:
        return t_from_text(m.group(1)), m.group(2)
    if text and "/" not in text and not _T.fullmatch(text):
        return None, text
    raise ProbeError(f"bad feature key {key!r}: expected tT/BLOCK, e.g. t100/output_blocks.4 "
                     "(or BLOCK alone for a network without timesteps)")


class Catalog:
    """What a feature file holds, for selecting from it: its (t, block) keys in file order
    and the model's full block list that ids count in."""

    def __init__(self, keys: Iterable[Key], model_blocks: Sequence[str] | None, owner: str,
                 model: str | None = None, noise: Mapping[str, Any] | None = None):
        self.keys = list(keys)
        self.blocks = list(dict.fromkeys(b for _, b in self.keys))
        self.timesteps = sorted({t for t, _ in self.keys if t is not None})
        # a network without timesteps (t None in every key): --t means nothing here
        self.timeless = bool(self.keys) and all(t is None for t, _ in self.keys)
        self.model = model
        # None: a file written before the model's list was recorded; its ids are ambiguous
        self.model_blocks = list(model_blocks) if model_blocks else None
        self.owner = owner
        self.hint = f"see `probe info {owner}`"
        self.noise = noise or {}  # noise_levels (t text -> alpha, sigma, logsnr), logsnr_range

    def timesteps_at(self, spec: LogSNR) -> list[int | float]:
        """The held t nearest each log-SNR of ``spec`` (by the file's noise table)."""
        levels = {t_value(t_from_text(k)): v["logsnr"]
                  for k, v in (self.noise.get("noise_levels") or {}).items()}
        levels = {t: v for t, v in levels.items() if t in self.timesteps}
        if not levels:
            raise ProbeError(f"{self.owner} records no log-SNR per t (written by an older probe "
                             "or a network without timesteps): select with --t, or re-extract")
        bounds = self.noise.get("logsnr_range") or (min(levels.values()), max(levels.values()))
        return sorted({nearest_log_snr(levels, x, bounds, self.owner) for x in spec.values})

    def block(self, word: str | int) -> str:
        if self.model_blocks is None:
            if _is_id(word):
                raise ProbeError(f"{self.owner} does not record its model's block list (it was "
                                 "written by an older probe), so block ids cannot be read: name "
                                 f"the block, one of {', '.join(self.blocks)}")
            return resolve_block(word, self.blocks, self.owner, self.hint)
        name = resolve_block(word, self.model_blocks, self.owner, self.hint)
        if name not in self.blocks:
            held = ", ".join(f"{b} ({self.model_blocks.index(b) + 1})" if b in self.model_blocks
                             else b for b in self.blocks)
            raise ProbeError(f"{self.owner} has no features of block {name} (id "
                             f"{self.model_blocks.index(name) + 1}); it holds {held} "
                             f"({self.hint})")
        return name

    def check_t(self, t: int | float) -> int | float:
        if self.timeless:
            raise ProbeError(f"{self.owner} holds features of {self.model or 'a network'}, which "
                             "has no timestep (it sees the clean image): drop --t (name blocks "
                             "with --blocks or --keys BLOCK)")
        if t not in self.timesteps:
            raise ProbeError(f"{self.owner} has no features at t={t}; it has t in "
                             f"{', '.join(map(t_text, self.timesteps))} ({self.hint})")
        return t

    def key(self, key: str | Key) -> Key:
        """One (t, block) pair, the block given by name or id, checked to be in the file."""
        if isinstance(key, tuple) and len(key) == 2:
            t, word = (None if key[0] is None else t_value(key[0])), key[1]
        elif self.timeless and "/" not in str(key):
            t, word = None, str(key).strip()
        else:
            m = _KEY.fullmatch(str(key).strip())
            if not m:
                raise ProbeError(f"bad feature key {key!r}: expected tT/BLOCK, e.g. t100/blocks.2 "
                                 "or t100/3 (a block id)")
            t, word = t_from_text(m.group(1)), m.group(2)
        if t is not None or not self.timeless:
            self.check_t(t)  # type: ignore[arg-type]  # None on a timed file: not found
        found = (t, self.block(word))
        if found not in self.keys:
            raise ProbeError(f"{self.owner} has no features for t={t}, block {found[1]} (it has "
                             f"that block at t in {', '.join(str(k[0]) for k in self.keys if k[1] == found[1])}; "
                             f"{self.hint})")
        return found

    def _key_words(self, keys: Spec) -> set:
        chosen = set()
        for w in _words(keys) or []:
            if isinstance(w, tuple) or (isinstance(w, str) and "/" in w):
                chosen.add(self.key(w))
            elif isinstance(w, str) and _T.fullmatch(w):
                chosen.update(k for k in self.keys if k[0] == self.check_t(t_from_text(w[1:])))
            else:
                name = self.block(w)
                chosen.update(k for k in self.keys if k[1] == name)
        return chosen

    def select(self, t: Spec = None, blocks: Spec = None, keys: Spec = None) -> list[Key]:
        """The keys named by ``t`` x ``blocks``, or by ``keys``, in file order (t ascending,
        blocks in forward order).  Every combination named must exist."""
        if keys is not None and _words(keys) is not None:
            if isinstance(t, LogSNR) or _words(t) is not None or _words(blocks) is not None:
                raise ProbeError("give either --keys or --t/--blocks, not both")
            chosen = self._key_words(keys)
            if not chosen:
                raise ProbeError(f"no keys given: name them as tT/BLOCK, tT or BLOCK ({self.hint})")
            return [k for k in self.keys if k in chosen]
        ts = self.timesteps_at(t) if isinstance(t, LogSNR) else parse_t(t)
        ts = None if ts is None else [self.check_t(x) for x in ts]
        words = _words(blocks)
        names = None if words is None else list(dict.fromkeys(self.block(w) for w in words))
        if names == []:
            raise ProbeError(f"no blocks given: give names, ids or 'all' ({self.hint})")
        if ts is not None and names is not None:  # both named: every pair must be there
            for tt in ts:
                for b in names:
                    if (tt, b) not in self.keys:
                        raise ProbeError(f"{self.owner} has no features for t={tt}, block {b} "
                                         f"({self.hint})")
        return [k for k in self.keys
                if (ts is None or k[0] in ts) and (names is None or k[1] in names)]

    def one(self, t: Spec = None, blocks: Spec = None, keys: Spec = None) -> Key:
        """Exactly one key: what is given must leave a single candidate."""
        found = self.select(t, blocks, keys)
        if len(found) != 1 and self.timeless:
            raise ProbeError(f"{self.owner} has {len(found)} blocks for this selection: choose one "
                             f"with --blocks ({', '.join(k[1] for k in found)})")
        if len(found) != 1:
            raise ProbeError(
                f"{self.owner} has {len(found)} (t, block) keys for this selection: choose one "
                f"with --t and --blocks (t in {', '.join(str(x) for x in sorted({k[0] for k in found}))}; "
                f"blocks {', '.join(dict.fromkeys(k[1] for k in found))})")
        return found[0]


def spread(items: Sequence[Any], k: int) -> list[Any]:
    """At most ``k`` of ``items``, evenly spaced, keeping the first and last (the demo's
    default blocks: a few across the network rather than the first few)."""
    if len(items) <= k:
        return list(items)
    step = (len(items) - 1) / (k - 1)
    return list(dict.fromkeys(items[round(i * step)] for i in range(k)))
