"""A family's arguments as typed in a shell or a JSON file -> the types its code expects.

Every family (DiT, ADM, l-DAE) coerces with :func:`coerce`, so they all accept the same
spellings, and ``probe extract`` and ``probe train`` read ``--config`` with
:func:`parse_config_items`.
"""
import json
import numbers

from ..errors import ProbeError

TRUE = ("true", "1", "yes", "y", "t")
FALSE = ("false", "0", "no", "n", "f")
BOOL_SPELLINGS = "true/false, 1/0, yes/no, t/f, y/n, any case"


def to_bool(value):
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


def _to_int(value):
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


def _to_float(value):
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value.strip() if isinstance(value, str) else value)


def _to_str(value):
    if isinstance(value, (tuple, list)):  # "1,2,4" given as a JSON list
        return ",".join(str(v) for v in value)
    if value is None or isinstance(value, (bool, dict)):
        raise ValueError(value)
    return str(value)


_CONVERT = {bool: (to_bool, f"True or False ({BOOL_SPELLINGS})"),
            int: (_to_int, "an integer"), float: (_to_float, "a number"),
            str: (_to_str, "a string")}


def coerce(key, value, like, what="argument"):
    """``value`` -> the type of ``like`` (a default value, or a type for arguments whose
    default is None).  A value that does not fit is a one-line ProbeError naming ``what``
    and ``key`` (``what``: e.g. "ADM flag") and what would fit."""
    kind = like if isinstance(like, type) else type(like)
    convert, expected = _CONVERT[kind]
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError):
        raise ProbeError(f"{what} {key}={value!r} should be {expected}") from None


def config_value(text):
    """One value as typed in a shell: JSON if it reads as JSON (8, 1e-3, [1, 2], true,
    null; Python's True and False too), else the text itself (``cosine``, ``1,2,4``,
    ``yes``: :func:`coerce` types it)."""
    try:
        return json.loads(text.lower() if text in ("True", "False") else text)
    except ValueError:
        return text


def parse_config_items(items):
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


def _json_file(path):
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


__all__ = ["BOOL_SPELLINGS", "coerce", "config_value", "parse_config_items", "to_bool"]
