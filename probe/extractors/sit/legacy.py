"""REPA's checkpoint formats: the legacy ``decoder_blocks`` naming and the ``args`` a
``train.py`` checkpoint records, both checked against the architecture asked for."""
import re
from typing import Any

from ...errors import ProbeError

_LEGACY = re.compile(r"^decoder_blocks\.(\d+)\.(.*)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def from_legacy(state: dict, config: dict, source: str) -> dict:
    """REPA's ``load_legacy_checkpoints``: ``decoder_blocks.i.*`` -> ``blocks.{i +
    encoder_depth}.*``; other keys unchanged.  The checkpoint itself says where its encoder
    ends (its ``blocks.*`` indices), so a different ``encoder_depth`` is named, not
    loaded into the wrong blocks."""
    if not any(_LEGACY.match(k) for k in state):
        return state
    depth = config["encoder_depth"]
    encoder = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    own = max(encoder) + 1 if encoder else 0
    if depth != own:
        key = next(k for k in state if _LEGACY.match(k))
        raise ProbeError(
            f"{source} is a legacy REPA checkpoint whose encoder has {own} blocks (blocks.0.."
            f"{own - 1}, then {key.split('.')[0]}.0..), so its key {key} does not fit "
            f"encoder_depth={depth}: use encoder_depth={own} (REPA's --encoder-depth)")
    out = {}
    for key, value in state.items():
        m = _LEGACY.match(key)
        out[f"blocks.{int(m.group(1)) + depth}.{m.group(2)}" if m else key] = value
    return out


def check_args(obj: Any, config: dict, source: str) -> None:
    """A ``train.py`` checkpoint of REPA records its ``args``: its encoder_depth must be the
    one the projectors are attached after (the weights alone cannot tell)."""
    args = obj.get("args") if isinstance(obj, dict) else None
    saved = getattr(args, "encoder_depth", None)
    if isinstance(args, dict):
        saved = args.get("encoder_depth", saved)
    if saved is not None and config["z_dims"] and int(saved) != config["encoder_depth"]:
        raise ProbeError(f"{source} was trained with args.encoder_depth={saved}, not "
                         f"encoder_depth={config['encoder_depth']}: its projectors read block "
                         f"{saved}; use encoder_depth={saved}")
