"""The package layering of docs/architecture.md, checked on the source: a package imports only what it depends on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib


def _root() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "packages").is_dir() and (parent / "noxfile.py").is_file():
            return parent
    return None


def _packages() -> dict[str, Path]:
    """Import name -> source folder of every package in the monorepo (none outside it)."""
    root = _root()
    found = {}
    for pyproject in sorted(root.glob("packages/*/pyproject.toml")) if root else ():
        for folder in (pyproject.parent / "src").iterdir():
            if (folder / "__init__.py").is_file():
                found[folder.name] = folder
    return found


def _declared(name: str, folder: Path) -> set[str]:
    """The mm packages ``name``'s pyproject.toml depends on, as import names."""
    meta = tomllib.loads((folder.parents[1] / "pyproject.toml").read_text())
    return {dep.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().replace("-", "_")
            for dep in meta["project"].get("dependencies", []) if dep.startswith("mm-")}


def _imported(folder: Path) -> dict[str, str]:
    """mm package -> one ``file:line`` importing it, for every module under ``folder``."""
    seen: dict[str, str] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for module in names:
                top = module.split(".")[0]
                if top.startswith("mm_"):
                    seen.setdefault(top, f"{path.relative_to(folder.parent)}:{node.lineno}")
    return seen


PACKAGES = _packages()


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_a_package_imports_only_what_it_depends_on(name):
    folder = PACKAGES[name]
    allowed = _declared(name, folder) | {name}
    wrong = {pkg: where for pkg, where in _imported(folder).items() if pkg not in allowed}
    assert not wrong, f"{name} imports packages it does not depend on: {wrong}"


@pytest.mark.skipif("mm_core" not in PACKAGES, reason="not inside the mm monorepo")
def test_mm_core_imports_no_other_mm_package():
    assert set(_imported(PACKAGES["mm_core"])) == {"mm_core"}
