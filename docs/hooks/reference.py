"""MkDocs hook: the reference pages, generated from the code at every build.

A page asks for a generated part with a line ``<!-- reference: NAME -->``, NAME a key of :data:`RENDERERS`:

- ``config``: every key of the pipeline config with its type, default, bound and meaning, from the config
  dataclasses (``pipeline/config.py``, ``EngineConfig``): field defaults, ``Range`` metadata, attribute docstrings;
- ``commands``: every command and option of ``emim-stream``, from its argparse parser;
- ``messages``: the fields and the JSON Schema of every message kind (``messages.json_schema()``);
- ``exit-codes``: the error tree under ``EmimError``, each class's exit code and docstring;
- ``demo-card``: the figures of the shipped demo model's card (``engines/weights/emim_xs_demo.json``).

``tests/docs/test_reference.py`` renders the same functions and checks that nothing of the code is missing.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import itertools
import json
import pkgutil
import re
import textwrap
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import msgspec.inspect as mi

MARKER = re.compile(r"^<!-- reference: ([a-z-]+) -->$", re.M)
PACKAGES = ("emim_stream.engines", "emim_stream.calibration", "emim_stream.pipeline", "emim_stream.cli")
DEMO_CARD = Path(__file__).resolve().parents[2] / "engines" / "weights" / "emim_xs_demo.json"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace every reference marker of a page with its rendering."""
    return MARKER.sub(lambda match: RENDERERS[match[1]](), markdown)


# ---------------------------------------------------------------------------------------------------------
# Text


def prose(docstring: str | None) -> str:
    """A docstring as one Markdown paragraph: reST roles and double backticks become code spans."""
    text = " ".join(inspect.cleandoc(docstring or "").split())
    text = re.sub(r":(?:class|func|meth|mod|data|attr|exc):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def cell(text: str) -> str:
    """Text for a table cell: pipes escaped (also inside code spans: the table splits on them first)."""
    return text.replace("|", "\\|")


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def yaml_value(value: Any) -> str:
    """A default as it would be written in a config file."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


# ---------------------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    """One key of the config file: its path (``cameras[].stride``) and what the reference says of it."""

    path: str
    type: str
    default: str
    bound: str
    meaning: str


def attribute_docstrings(cls: type) -> dict[str, str]:
    """``field -> docstring`` of the string literals that follow a class's annotated assignments."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = after.value.value
    return docs


def type_text(info: mi.Type) -> str:
    """A msgspec type in words: ``integer``, ``area | linear | pyramid``, ``list of strings``, ``... or null``."""
    if isinstance(info, mi.UnionType):
        return " or ".join(type_text(t) for t in info.types)
    if isinstance(info, mi.EnumType):
        return " | ".join(f"`{e.value}`" for e in info.cls)
    if isinstance(info, mi.LiteralType):
        return " | ".join(f"`{v}`" for v in info.values)
    if isinstance(info, (mi.VarTupleType, mi.ListType)):
        return f"list of {type_text(info.item_type)}s"
    names = {mi.IntType: "integer", mi.FloatType: "number", mi.StrType: "string", mi.BoolType: "boolean",
             mi.NoneType: "null", mi.AnyType: "any"}
    return names.get(type(info), type(info).__name__)


def config_sections() -> list[tuple[str, type, bool]]:
    """``(key, dataclass, is_list)`` of each section of :class:`PipelineConfig`, in declaration order."""
    from emim_stream.pipeline.config import PipelineConfig

    sections = []
    for f in mi.type_info(PipelineConfig).fields:
        info = f.type
        is_list = isinstance(info, mi.VarTupleType)
        sections.append((f.name, (info.item_type if is_list else info).cls, is_list))
    return sections


def config_keys(cls: type, prefix: str) -> Iterator[ConfigKey]:
    """The keys of one section dataclass."""
    from emim_stream.engines.validation import RANGE

    docs = attribute_docstrings(cls)
    types = {f.name: f.type for f in mi.type_info(cls).fields}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = yaml_value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = yaml_value(f.default_factory())
        else:
            default = "(required)"
        bound = f.metadata.get(RANGE)
        rule = bound.rule() if bound else ""
        yield ConfigKey(f"{prefix}{f.name}", type_text(types[f.name]), default, rule, prose(docs.get(f.name)))


def render_config() -> str:
    parts = []
    for name, cls, is_list in config_sections():
        key = f"{name}[]" if is_list else name
        rows = [(f"`{k.path}`", k.type, k.default, k.bound, k.meaning) for k in config_keys(cls, f"{key}.")]
        list_note = " A list: one entry per camera, at least one." if is_list else ""
        parts.append(f"## `{key}`\n\n{prose(cls.__doc__)}{list_note}\n\n"
                     + table(("key", "type", "default", "bound", "meaning"), rows))
    from emim_stream.pipeline.config import DEPRECATED_KEYS

    renamed = [(f"`{'.'.join(old)}`", f"`{new}`") for old, new in DEPRECATED_KEYS.items()]
    parts.append("## Renamed sections\n\nRead under their old names, with a warning, until version 0.3.\n\n"
                 + table(("old name", "new name"), renamed))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Commands


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """``emim-stream``'s sub-command parsers by name, in the order of ``--help``."""
    from emim_stream.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


def option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options and positional arguments a user types (not ``--help`` nor the sub-command list)."""
    return [
        a for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS
    ]


def invocation(action: argparse.Action) -> str:
    """``--config CONFIG``, ``-v, --verbose``, ``PATH``: the argument as typed."""
    if action.choices is not None and action.metavar is None:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        metavar = action.metavar or action.dest.upper()
    if not action.option_strings:
        return metavar if isinstance(metavar, str) else " ".join(metavar)
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return names
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    if action.nargs in ("*", "+"):
        metavar = f"{metavar} ..."
    elif action.nargs == "?":
        metavar = f"[{metavar}]"
    return f"{names} {metavar}"


def help_text(action: argparse.Action, prog: str) -> str:
    """The help as ``--help`` shows it, with the default added where the help does not give it."""
    text = action.help % {**vars(action), "prog": prog} if action.help else ""
    shown = action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
    if shown and "default" not in text:
        text = f"{text} (default: `{action.default}`)".strip()
    if action.required and action.option_strings:
        text = f"**required**; {text}"
    return text


def render_commands() -> str:
    parts = []
    for name, parser in command_parsers().items():
        usage = parser.format_usage().removeprefix("usage: ").strip()
        rows = [(f"`{invocation(a)}`", help_text(a, parser.prog)) for a in option_actions(parser)]
        title = f"## `emim-stream {name}`" if name else "## `emim-stream`"
        parts.append(f"{title}\n\n{prose(parser.description)}\n\n```text\n{usage}\n```\n\n"
                     + table(("argument", "meaning"), rows))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Messages


def message_kinds() -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON Schema of the messages, and ``kind -> name of its definition``."""
    from emim_stream.pipeline.comms.messages import json_schema

    schema = json_schema()
    kinds = {kind: ref.rpartition("/")[2] for kind, ref in schema["discriminator"]["mapping"].items()}
    return schema, kinds


def schema_type(node: dict[str, Any]) -> str:
    if "$ref" in node:
        return f"object `{node['$ref'].rpartition('/')[2].lstrip('_')}`"
    if "anyOf" in node:
        return " or ".join(schema_type(n) for n in node["anyOf"])
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " | ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if node.get("type") == "array":
        return f"list of {schema_type(node['items'])}"
    if node.get("type") == "object" and "additionalProperties" in node:
        return f"object of {schema_type(node['additionalProperties'])}"
    return node.get("type", "any")


def field_rows(definition: dict[str, Any]) -> list[tuple[str, ...]]:
    required = set(definition.get("required", ()))
    return [
        (f"`{name}`", schema_type(node), "yes" if name in required else f"no (default `{json.dumps(node['default'])}`)"
         if "default" in node else "no")
        for name, node in definition["properties"].items()
    ]


def render_messages() -> str:
    schema, kinds = message_kinds()
    defs = schema["$defs"]
    parts = []
    nested = []
    for kind, name in kinds.items():
        parts.append(f"## `{kind}`\n\n" + table(("field", "type", "required"), field_rows(defs[name])))
        nested += [ref for node in defs[name]["properties"].values() for ref in _refs(node) if ref not in nested]
    for name in nested:
        title = name.lstrip("_")
        parts.append(f"## object `{title}`\n\n{prose(defs[name].get('description'))}\n\n"
                     + table(("field", "type", "required"), field_rows(defs[name])))
    code = textwrap.indent(f"```json\n{json.dumps(schema, indent=2)}\n```", "    ")
    parts.append(f'## JSON Schema\n\n??? note "All kinds (draft 2020-12)"\n\n{code}')
    return "\n\n".join(parts)


def _refs(node: Any) -> Iterator[str]:
    """The definitions a schema node refers to, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value.rpartition("/")[2]
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


# ---------------------------------------------------------------------------------------------------------
# Exit codes


def error_classes() -> list[tuple[type, int]]:
    """Every subclass of ``EmimError`` (all modules imported first, so none is missed) with its depth."""
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    from emim_stream.engines.errors import EmimError

    found: list[tuple[type, int]] = []

    def walk(cls: type, depth: int) -> None:
        found.append((cls, depth))
        for sub in sorted(cls.__subclasses__(), key=lambda c: (c.exit_code, c.__name__)):
            walk(sub, depth + 1)

    walk(EmimError, 0)
    return found


def render_exit_codes() -> str:
    rows = [
        (str(cls.exit_code), f"`{cls.__name__}`", f"`{cls.__base__.__name__}`" if depth else "", prose(cls.__doc__))
        for cls, depth in error_classes()
    ]
    rows.sort(key=lambda row: int(row[0]))
    return table(("code", "error", "subclass of", "raised when"), rows)


# ---------------------------------------------------------------------------------------------------------
# The demo model's card


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def render_demo_card() -> str:
    card = json.loads(DEMO_CARD.read_text())
    evaluation = card["evaluation"]
    photo, live = evaluation["photo_test"], evaluation["live_like_windows"]
    splits = [
        ("synthetic (classic scenes)", evaluation["command"], evaluation),
        ("synthetic, windows anywhere in a live scene", live["command"], live),
        ("photographic (held-out pictures)", photo["command"], photo),
    ]
    rows = [(name, f"`{command.replace('engines/weights/emim_xs_demo.pt', 'emim_xs.demo')}`",
             f"**{percent(split['top1'])}**") for name, command, split in splits]
    labels = card["labels"]
    per_class = [(name, *(f"{100 * split['per_class'][label]:.0f}%" for label in labels))
                 for name, split in (("synthetic", evaluation), ("photographic", photo))]
    latency = card["latency_cpu"]
    batched = ", ".join(f"{key}: {value['clips_per_s']:.0f} clips/s" for key, value in latency["batched"].items())
    inputs = card["input"]
    facts = [
        ("model", f"`{card['model']}`: {card['architecture']}"),
        ("parameters", f"{card['parameters']:,} ({card['parameters_note']})"),
        ("input", f"{inputs['frames']} x {inputs['height']} x {inputs['width']} ({inputs['raw_frames']} raw frames), "
                  f"`{inputs['resize']}` resize, mean {inputs['mean'][0]} / std {inputs['std'][0]}"),
        ("labels", ", ".join(f"`{label}`" for label in labels)),
        ("training", f"{card['training']['clips_seen']:,} clips in {len(card['training']['train_seconds_by_stage'])} "
                     f"stages, {card['training']['train_seconds'] / 3600:.1f} h on 2 CPU cores"),
        ("CPU latency", f"`{latency['command']}`: {latency['clip_p50_ms']} ms per clip median "
                        f"({latency['clips_per_s']:.0f} clips/s); {batched}"),
        ("file", f"`engines/weights/{card['file']}`, {card['file_bytes'] / 1e6:.1f} MB, sha256 "
                 f"`{card['file_sha256'][:16]}...`; licence {card['license']}"),
    ]
    return "\n\n".join([
        table(("", ""), facts),
        table(("held-out test split (900 clips, 100 per class)", "command", "top-1"), rows),
        table(("per class", *labels), per_class),
        f"Limitations (from the card): {card['limitations']}",
    ])


RENDERERS: dict[str, Callable[[], str]] = {
    "config": render_config,
    "commands": render_commands,
    "messages": render_messages,
    "exit-codes": render_exit_codes,
    "demo-card": render_demo_card,
}
