"""Plain data (a YAML config, a JSON message) into typed records with msgspec, and its errors in words.

msgspec checks the types, the required fields, the literal choices and the ``Meta`` bounds. This module turns
its :class:`msgspec.ValidationError` into the field's path and a rule a user reads (``cameras[0].resize``,
``must be one of ['area', 'linear', 'pyramid'], got 'cubic'``), and finds the known key closest to a typo.
A ``__post_init__`` that raises ``ValueError("<field>: <rule>")`` gets its field appended to the path.
The numeric bounds of config fields are data (:class:`Range` in the field's metadata, :func:`ranged`), read by
the validation (:func:`check_ranges`) and by the generated reference alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi

__all__ = ["RANGE", "Range", "check_ranges", "closest_key", "explain", "path_text", "ranged"]

_AT = re.compile(r"(?P<text>.*) - at `\$(?P<path>[^`]*)`", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}
_RULES = {"Invalid base64 encoded string": "is not base64"}

RANGE = "range"
"""The key of a dataclass field's metadata that holds its :class:`Range`."""

Path = list[str | int | None]
"""Keys and indices from the root; None: a value of a dict whose key msgspec does not report."""


def path_text(path: Path) -> str:
    """``["cameras", 0, "uri"]`` -> ``cameras[0].uri`` (a dict value of unknown key: ``stages[...]``)."""
    return "".join(f".{s}" if isinstance(s, str) else f"[{'...' if s is None else s}]" for s in path).lstrip(".")


@dataclass(frozen=True, slots=True)
class Range:
    """The interval a number must lie in: ``low`` (excluded when ``low_open``) to ``high`` (excluded when
    ``high_open``; infinite = no upper bound). NaN lies in no range."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    unit: str = ""
    """Appended to the rule (``s`` for seconds)."""

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def rule(self) -> str:
        """The bound in words: ``in 1..1024``, ``> 0 and <= 3600 s``, ``>= 0 and < 1``, ``>= 5``."""
        low = f"{'>' if self.low_open else '>='} {_plain(self.low)}"
        if math.isinf(self.high):
            text = low
        elif not (self.low_open or self.high_open):
            text = f"in {_plain(self.low)}..{_plain(self.high)}"
        else:
            text = f"{low} and {'<' if self.high_open else '<='} {_plain(self.high)}"
        return f"{text} {self.unit}" if self.unit else text


def ranged(default: Any, low: float, high: float = math.inf, **options: Any) -> Any:
    """A dataclass field with ``default`` whose value (unless None) must lie in ``Range(low, high, **options)``."""
    return dataclasses.field(default=default, metadata={RANGE: Range(low, high, **options)})


def check_ranges(record: Any, error: Callable[[str, str], Exception]) -> None:
    """Raise ``error(field name, "must be <rule>, got <value>")`` for the first field of the dataclass ``record``
    whose value lies outside its :func:`ranged` range."""
    for f in dataclasses.fields(record):
        bound = f.metadata.get(RANGE)
        value = getattr(record, f.name)
        if bound is not None and value is not None and value not in bound:
            raise error(f.name, f"must be {bound.rule()}, got {value}")


def _plain(number: float) -> str:
    """``1000000.0`` -> ``1000000``, ``0.5`` -> ``0.5``."""
    return str(int(number)) if float(number).is_integer() else str(number)


def closest_key(key: object, known: Iterable[str]) -> str | None:
    """The known key that ``key`` is most probably a typo of (difflib), or None."""
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return close[0] if close else None


def explain(err: msgspec.ValidationError, data: Any, tp: Any) -> tuple[str, str]:
    """``(field path, rule)`` of a failed ``msgspec.convert(data, tp)``, e.g. ``("ring.slots", "must be ...")``.

    A missing field gives the rule ``is missing``.
    """
    match = _AT.fullmatch(str(err))
    text, path = (match["text"], _parse(match["path"])) if match else (str(err), [])
    value = _value_at(data, path)
    got = "" if value is _UNKNOWN else f", got {value!r}"
    if missing := re.fullmatch(r"Object missing required field `(.+)`", text):
        return path_text([*path, missing[1]]), "is missing"
    if isinstance(value, float) and not math.isfinite(value):
        return path_text(path), f"must be finite, got {value!r}"
    if expected := re.fullmatch(r"Expected `([^`]+)`(?:, got `[^`]+`)?(.*)", text, re.S):
        if str(sys.float_info.max) in expected[2]:  # the bounds of a finite float
            return path_text(path), f"must be finite{got}"
        words = " or ".join(_WORDS.get(name, name) for name in expected[1].split(" | "))
        return path_text(path), f"must be {words}{expected[2]}{got}"
    if text.startswith(("Invalid enum value", "Invalid value")):
        info = _type_at(mi.type_info(tp), path, data)
        choices = [e.value for e in info.cls] if isinstance(info, mi.EnumType) else getattr(info, "values", ())
        return path_text(path), f"must be one of {list(choices)}{got}"
    if text in _RULES:
        return path_text(path), _RULES[text]
    if rule := re.fullmatch(r"([\w.\[\]]+): (.*)", text, re.S):  # a FieldError: "name: rule"
        return path_text([*path, rule[1]]), rule[2]
    return path_text(path), text


def _parse(text: str) -> Path:
    return [name or (None if index == "..." else int(index)) for name, index in _STEP.findall(text)]


_UNKNOWN = object()


def _value_at(data: Any, path: Path) -> Any:
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return _UNKNOWN
    return data


def _type_at(info: mi.Type, path: Path, data: Any) -> mi.Type:
    """The msgspec type info of the field at ``path`` of ``data`` (through records, sequences, dicts and unions;
    of a tagged union, the member whose tag ``data`` carries)."""
    for step in path:
        if isinstance(info, mi.UnionType):
            members = [t for t in info.types if not isinstance(t, mi.NoneType)]
            tagged = [t for t in members if isinstance(t, mi.StructType) and t.tag is not None]
            here = data if isinstance(data, Mapping) else {}
            info = next((t for t in tagged if here.get(t.tag_field) == t.tag), members[0])
        data = _value_at(data, [step])
        if isinstance(step, int):
            info = getattr(info, "item_type", info)
        elif isinstance(info, (mi.StructType, mi.DataclassType)):
            info = next((f.type for f in info.fields if f.encode_name == step), info)
        elif isinstance(info, mi.DictType):
            info = info.value_type
    return info
