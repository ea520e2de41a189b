"""Dependencies point one way: ``engines`` <- ``calibration``, ``engines`` <- ``pipeline``, all three <- ``cli``.

Every ``.py`` file of the four packages is parsed (nothing is imported): each ``import`` and
``from ... import`` counts wherever it stands (module level, inside a function, under
``TYPE_CHECKING``), relative imports are resolved, and so is ``importlib.import_module`` with a
literal name (or an f-string with a literal start). A failure names the file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engines", "calibration", "pipeline", "cli")
MAY_IMPORT: dict[str, frozenset[str]] = {
    "engines": frozenset({"engines"}),
    "calibration": frozenset({"engines", "calibration"}),
    "pipeline": frozenset({"engines", "pipeline"}),
    "cli": frozenset(PACKAGES),
}
"""Package -> the packages of this project it may import (nothing may import ``cli`` but ``cli``)."""


def imported_modules(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the Python file ``path`` (under ``root``)."""
    package = list(path.relative_to(root).parent.parts)
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            else:
                yield node.lineno, node.module or ""
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            name = node.args[0]
            if isinstance(name, ast.JoinedStr) and name.values:
                name = name.values[0]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                yield node.lineno, name.value


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module"
    )


def project_edges(root: Path = ROOT) -> list[tuple[str, int, str, str]]:
    """(file, line, importing package, imported package) for every import of one project package by a file."""
    edges = []
    for source in PACKAGES:
        for path in sorted((root / source).rglob("*.py")):
            for line, module in imported_modules(path, root):
                target = module.split(".", 1)[0]
                if target in PACKAGES:
                    edges.append((path.relative_to(root).as_posix(), line, source, target))
    return edges


def test_imports_point_one_way():
    wrong = [
        f"{file}:{line}: {source} imports {target} (it may import only {', '.join(sorted(MAY_IMPORT[source]))})"
        for file, line, source, target in project_edges()
        if target not in MAY_IMPORT[source]
    ]
    assert not wrong, "imports against the direction engines <- calibration, pipeline <- cli:\n" + "\n".join(wrong)


def test_every_kind_of_import_is_seen(tmp_path):
    package = tmp_path / "engines" / "backends"
    package.mkdir(parents=True)
    (package / "probe.py").write_text(
        "from __future__ import annotations\n"
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from calibration.report import build_report\n"
        "def late():\n"
        "    import pipeline.ring\n"
        "    from .. import errors\n"
        "    from ..data import open_dataset\n"
        "    importlib.import_module('cli.main')\n"
        "    importlib.import_module(f'pipeline.{late.__name__}')\n"
    )
    assert sorted(imported_modules(package / "probe.py", tmp_path)) == [
        (1, "__future__"),
        (2, "importlib"),
        (3, "typing"),
        (5, "calibration.report"),
        (7, "pipeline.ring"),
        (8, "engines"),
        (9, "engines.data"),
        (10, "cli.main"),
        (11, "pipeline."),
    ]
    for name in ("calibration", "pipeline", "cli"):
        (tmp_path / name).mkdir()
    found = {(source, target) for _, _, source, target in project_edges(tmp_path)}
    assert found == {("engines", "calibration"), ("engines", "pipeline"), ("engines", "cli"), ("engines", "engines")}
