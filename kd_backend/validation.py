"""Range and finiteness checks of numeric config fields, with one message format.

Every numeric knob of every config dataclass is checked when the config is built (so a script
refuses it while parsing its flags, before any work), and the message names the field, the bad
value and the valid range: ``DistillerConfig.max_grad_norm=-1.0 is out of range: must be a finite
number in (0, inf)``.
"""

from __future__ import annotations

import math
from typing import Any

from kd_backend.errors import ConfigError


def _range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or math.isinf(high) else ']'}"


def check_int(owner: str, name: str, value: Any, minimum: int = 1, maximum: float = math.inf,
              allow_none: bool = False) -> None:
    """An integer in ``[minimum, maximum]`` (``None`` too, when ``allow_none``).

    :raises ConfigError: naming ``owner.name``, the value and the range.
    """
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        hint = " or None" if allow_none else ""
        raise ConfigError(
            f"{owner}.{name}={value!r} is out of range: must be an integer in {_range(minimum, maximum, False, False)}{hint}"
        )


def check_float(owner: str, name: str, value: Any, low: float = 0.0, high: float = math.inf,
                low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> None:
    """A finite number in the range given by ``low``/``high`` (open ends where asked).

    :raises ConfigError: naming ``owner.name``, the value and the range.
    """
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        hint = " or None" if allow_none else ""
        raise ConfigError(
            f"{owner}.{name}={value!r} is out of range: must be a finite number in "
            f"{_range(low, high, low_open, high_open)}{hint}"
        )
