"""msgspec validation errors in words: the field's path and the rule, for every kind of failure msgspec reports."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec
import pytest

from emim_stream.engines.validation import closest_key, explain, path_text


class Mode(str, enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclass(frozen=True)
class Item:
    name: str
    weight: Annotated[float, msgspec.Meta(ge=0, le=1e300)] = 0.0
    kind: Literal["a", "b"] = "a"
    mode: Mode = Mode.FAST
    blob: bytes = b""

    def __post_init__(self) -> None:
        if self.name == "reserved":
            raise ValueError("name: 'reserved' is taken")


@dataclass(frozen=True)
class Root:
    items: tuple[Item, ...]
    limit: int | None = None
    extra: dict[str, Item] = field(default_factory=dict)


@pytest.mark.parametrize(
    ("data", "path", "rule"),
    [
        ({"items": [{"name": "x"}, {}]}, "items[1].name", "is missing"),
        ({"items": [], "limit": "many"}, "limit", "must be an integer or null, got 'many'"),
        ({"items": [{"name": "x", "weight": -1}]}, "items[0].weight", "must be a number >= 0.0, got -1"),
        ({"items": [{"name": "x", "weight": float("nan")}]}, "items[0].weight", "must be finite, got nan"),
        ({"items": [{"name": "x", "kind": "c"}]}, "items[0].kind", "must be one of ['a', 'b'], got 'c'"),
        ({"items": [{"name": "x", "mode": "warp"}]}, "items[0].mode", "must be one of ['fast', 'slow'], got 'warp'"),
        ({"items": [{"name": "reserved"}]}, "items[0].name", "'reserved' is taken"),
        ({"items": [], "extra": {"k": {"name": 3}}}, "extra[...].name", "must be a string"),
        ({"items": "x"}, "items", "must be a list, got 'x'"),
    ],
)
def test_explain_names_the_field_and_the_rule(data, path, rule):
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(data, Root)
    assert explain(info.value, data, Root) == (path, rule)


def test_explain_base64_and_closest_key():
    data = {"items": [{"name": "x", "blob": "not base64!"}]}
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(data, Root)
    assert explain(info.value, data, Root) == ("items[0].blob", "is not base64")
    assert closest_key("limt", ["items", "limit", "extra"]) == "limit"
    assert closest_key("zzz", ["items", "limit"]) is None
    assert path_text(["cameras", 0, "uri"]) == "cameras[0].uri"
