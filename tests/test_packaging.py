"""The installed layout: one namespace, ``emim_stream``, mapped onto the repository's top-level folders."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("engines", "pipeline", "calibration", "cli")


def test_pyproject_lists_every_package_folder_under_the_one_namespace():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        "emim_stream." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk
    assert setuptools["package-dir"] == {f"emim_stream.{folder}": folder for folder in FOLDERS}


def test_no_module_imports_a_bare_top_level_folder():
    bare = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in (*FOLDERS, "tests", "tools")
        for path in (ROOT / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith(tuple(f"{kw} {name}" for kw in ("from", "import") for name in FOLDERS))
        and not line.lstrip().startswith(tuple(f"{kw} {name}_" for kw in ("from", "import") for name in FOLDERS))
    ]
    assert bare == []
