"""A family's arguments as typed in a shell or a JSON file -> the types its code expects.

Every family (DiT, ADM, l-DAE, SD) reads its arguments with :func:`read_config` (unknown
keys refused with a suggestion, values coerced against the defaults by :func:`coerce`),
so they all accept the same spellings, booleans and "off" (:func:`is_off`) included; and
``probe extract`` and ``probe train`` read ``--config`` with :func:`parse_config_items`.
"""
from __future__ import annotations

import json
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ProbeError, suggest

TRUE = ("true", "1", "yes", "y", "t")
FALSE = ("false", "0", "no", "n", "f")
BOOL_SPELLINGS = "true/false, 1/0, yes/no, t/f, y/n, any case"


def to_bool(value: Any) -> bool:
    """A real bool, 0/1, or one of TRUE/FALSE in any case -> bool; ValueError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (numbers.Integral, str)):
        text = str(value).strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):  # True is an int to Python, not a size to us
        raise ValueError(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    number = float(value.strip() if isinstance(value, str) else value)
    if not number.is_integer():  # 8.0 (as JSON may write it) is 8; 8.5 is no integer
        raise ValueError(value)
    return int(number)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value.strip() if isinstance(value, str) else value)


def _to_str(value: Any) -> str:
    if isinstance(value, (tuple, list)):  # "1,2,4" given as a JSON list
        return ",".join(str(v) for v in value)
    if value is None or isinstance(value, (bool, dict)):
        raise ValueError(value)
    return str(value)


_CONVERT = {bool: (to_bool, f"True or False ({BOOL_SPELLINGS})"),
            int: (_to_int, "an integer"), float: (_to_float, "a number"),
            str: (_to_str, "a string")}


def coerce(key: str, value: Any, like: Any, what: str = "argument") -> Any:
    """``value`` -> the type of ``like`` (a default value, or a type for arguments whose
    default is None).  A value that does not fit is a one-line ProbeError naming ``what``
    and ``key`` (``what``: e.g. "ADM flag") and what would fit."""
    kind = like if isinstance(like, type) else type(like)
    convert, expected = _CONVERT[kind]
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError):
        raise ProbeError(f"{what} {key}={value!r} should be {expected}") from None


def read_config(given: Mapping[str, Any], defaults: Mapping[str, Any], what: str,
                takes: str | None = None, types: Mapping[str, Any] | None = None,
                none_keeps_default: bool = False) -> dict[str, Any]:
    """A family's arguments as the user gave them -> the defaults updated with them, each
    coerced (:func:`coerce`) to the type of its default.

    ``what`` names one argument in messages ("DiT argument"); an unknown key is a one-line
    error with the closest known key and ``takes`` (what the family takes; default: the
    list of keys).  ``types`` gives the type of keys whose default does not say it
    (default None); a key typed None is passed as given.  None given keeps a None default,
    and any default with ``none_keeps_default``; otherwise it is refused like any misfit."""
    check_keys(given, defaults, what, takes)
    types = types or {}
    out = dict(defaults)
    for key, value in given.items():
        if value is None and (none_keeps_default or defaults[key] is None):
            continue
        like = types[key] if key in types else defaults[key]
        out[key] = value if like is None else coerce(key, value, like, what)
    return out


def check_keys(given: Iterable[str], known: Iterable[str], what: str,
               takes: str | None = None) -> None:
    """Refuse, in one line, the first key that is not ``known``, with the closest known key
    and ``takes`` (default: the list of known keys)."""
    known = list(known)
    for key in given:
        if key not in known:
            raise ProbeError(f"unknown {what} {key!r}{suggest(key, known)}; "
                             f"{takes or 'valid: ' + ', '.join(known)}")


def is_off(value: Any) -> bool:
    """Whether an option that can be switched off is: None (JSON null) or a false boolean
    spelling (:data:`FALSE`, as :func:`to_bool` reads it)."""
    if value is None:
        return True
    try:
        return not to_bool(value)
    except ValueError:
        return False


def config_value(text: str) -> Any:
    """One value as typed in a shell: JSON if it reads as JSON (8, 1e-3, [1, 2], true,
    null; Python's True and False too), else the text itself (``cosine``, ``1,2,4``,
    ``yes``: :func:`coerce` types it)."""
    try:
        return json.loads(text.lower() if text in ("True", "False") else text)
    except ValueError:
        return text


def parse_config_items(items: Iterable[str]) -> dict[str, Any]:
    """``--config`` items, each ``KEY=VALUE`` or a JSON file of ``{KEY: VALUE}``, in order
    (later ones win) -> one dict of raw values for the family to coerce."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep and item.endswith(".json"):
            out.update(_json_file(item))
        elif not sep or not key.strip():
            raise ProbeError(f"bad --config {item!r}: use KEY=VALUE (e.g. --config depth=8) "
                             "or a .json file of them")
        else:
            out[key.strip()] = config_value(value.strip())
    return out


def _json_file(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            content = json.load(fh)
    except OSError as e:
        raise ProbeError(f"cannot read --config file {path}: {e.strerror or e}; check the "
                         "path") from e
    except ValueError as e:
        raise ProbeError(f"--config file {path} is not valid JSON ({e}): fix it or pass "
                         "KEY=VALUE items") from e
    if not isinstance(content, dict):
        raise ProbeError(f"--config file {path} holds a JSON {type(content).__name__}, not "
                         'an object: write {"KEY": VALUE, ...}')
    return content


__all__ = ["BOOL_SPELLINGS", "check_keys", "coerce", "config_value", "is_off", "parse_config_items",
           "read_config", "to_bool"]
