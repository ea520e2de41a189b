"""The generated reference pages (docs/hooks/reference.py) against the code they are generated from.

Each test collects what the code has (config keys, command options, message fields, exit codes) on its own path,
not through the generator, and checks that the rendered page lists every item, so a key added to the code without
reaching the reference fails here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import msgspec.inspect as mi
import pytest

from emim_stream.cli.main import COMMANDS, build_parser
from emim_stream.engines.errors import EmimError
from emim_stream.pipeline.comms import messages
from emim_stream.pipeline.config import PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def _load_hook():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as MkDocs loads a hook
    spec.loader.exec_module(module)
    return module


reference = _load_hook()


def rows(page: str) -> dict[str, list[str]]:
    """First cell (its code span) -> the other cells, of every table row of a rendered page."""
    found = {}
    for line in page.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if cells and (name := re.fullmatch(r"`([^`]+)`", cells[0])):
            found[name[1]] = cells[1:]
    return found


def missing(expected: list[str], documented: dict[str, list[str]]) -> list[str]:
    return [item for item in expected if item not in documented]


def config_key_paths(cls: type, prefix: str = "") -> list[str]:
    """Every key of a config file: the dataclass fields, nested sections and list items walked by type hints."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        if dataclasses.is_dataclass(item):
            paths += config_key_paths(item, f"{prefix}{f.name}{'[]' if item is not tp else ''}.")
        else:
            paths.append(f"{prefix}{f.name}")
    return paths


def test_every_config_key_is_in_the_reference_with_the_default_the_loader_gives():
    page = rows(reference.render_config())
    expected = config_key_paths(PipelineConfig)
    assert len(expected) > 80
    assert missing(expected, page) == []
    cfg = load_config(None, ["cameras=[{id: cam1, source: x}]"])
    for path in expected:
        section, _, key = path.partition(".")
        if section.endswith("[]"):
            continue
        value = getattr(getattr(cfg, section), key)
        value = list(value) if isinstance(value, tuple) else getattr(value, "value", value)  # as YAML writes it
        assert page[path][1] == f"`{json.dumps(value)}`", path


def test_config_bounds_are_the_ones_the_loader_enforces():
    """A bound shown for a key is what loading a file checks: its limit passes, one step beyond fails."""
    page = rows(reference.render_config())
    assert page["window.stride"][2] == "in 1..1024"
    assert page["publish.heartbeat_s"][2] == "> 0 and <= 3600 s"
    assert page["engine.threads"][2] == "in 0..256"
    load_config(None, ["cameras=[{id: c, source: x}]", "window.stride=1024", "publish.heartbeat_s=3600"])
    for override in ("window.stride=1025", "publish.heartbeat_s=0", "engine.threads=257"):
        with pytest.raises(EmimError):
            load_config(None, ["cameras=[{id: c, source: x}]", override])


def test_a_key_left_out_of_the_page_is_reported():
    page = reference.render_config()
    without = "\n".join(line for line in page.splitlines() if not line.startswith("| `window.stride` "))
    assert missing(config_key_paths(PipelineConfig), rows(without)) == ["window.stride"]


def test_every_command_and_option_is_in_the_reference():
    page = reference.render_commands()
    sections = dict(re.findall(r"^## `emim-stream ?([^`]*)`\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    assert set(sub) == set(COMMANDS) and set(COMMANDS) <= set(sections)
    for name, command in {"": parser, **sub}.items():
        documented = " ".join(rows(sections[name]))
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert re.search(rf"(^|[ ,]){re.escape(option)}\b", documented), f"emim-stream {name} {option}"
            if not action.option_strings and action.dest not in ("help", "command"):
                assert (action.metavar or action.dest.upper()) in documented or "{" in documented, (name, action.dest)


def wire_fields(info: mi.Type, seen: set[str] | None = None) -> dict[str, set[str]]:
    """Struct name -> its field names on the wire, for every struct a message payload contains."""
    seen = {} if seen is None else seen
    if isinstance(info, mi.StructType) and info.cls.__name__ not in seen:
        seen[info.cls.__name__] = {f.encode_name for f in info.fields}
        for f in info.fields:
            wire_fields(f.type, seen)
    for child in getattr(info, "types", ()) + tuple(
        getattr(info, name) for name in ("item_type", "value_type") if hasattr(info, name)
    ):
        wire_fields(child, seen)
    return seen


def test_every_message_field_is_in_the_reference():
    page = reference.render_messages()
    sections = dict(re.findall(r"^## (?:object )?`([^`]+)`\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    structs = wire_fields(mi.type_info(messages._Wire))  # the union parse_payload decodes
    kinds = {info.cls.__name__: info.tag for info in mi.type_info(messages._Wire).types}
    assert set(kinds.values()) == {"label", "status", "event", "preview", "stats"}
    for name, fields in structs.items():
        section = sections[kinds.get(name, name.lstrip("_"))]
        assert missing(sorted(fields | {"kind"} if name in kinds else fields), rows(section)) == [], name
    for kind in kinds.values():
        assert rows(sections[kind])["schema"][0] == f"`{messages.SCHEMA_VERSIONS[kind]}`"


def test_every_exit_code_of_the_source_is_in_the_reference():
    """Every ``exit_code = N`` written in the packages' source appears, and each class shows its own code."""
    page = reference.render_exit_codes()
    code_of = {name: int(code) for code, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", page, re.M)}
    sources = [p for d in ("engines", "pipeline", "calibration", "cli") for p in (ROOT / d).rglob("*.py")]
    written = {int(n) for p in sources for n in re.findall(r"^\s+exit_code(?:: int)? = (\d+)", p.read_text(), re.M)}
    assert written and written <= set(code_of.values())
    for cls, _ in reference.error_classes():
        assert code_of[cls.__name__] == cls.exit_code


def test_the_demo_card_figures_are_the_cards():
    card = json.loads(reference.DEMO_CARD.read_text())
    page = reference.render_demo_card()
    assert f"**{100 * card['evaluation']['top1']:.1f}%**" in page
    assert f"**{100 * card['evaluation']['photo_test']['top1']:.1f}%**" in page


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: a broken link or anchor, or a marker without a renderer, fails."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    built = (tmp_path / "site" / "reference" / "configuration" / "index.html").read_text()
    assert "window.stride" in built and "<!-- reference:" not in built
