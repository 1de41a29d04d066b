"""Layering inside mm_models_video: a model family imports the shared modules, never another family's internals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mm_models_video

PACKAGE = Path(mm_models_video.__file__).parent
FAMILIES = sorted(folder.name for folder in PACKAGE.iterdir() if (folder / "__init__.py").is_file())


def _imported(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (relative imports resolved, ``from pkg import mod`` as ``pkg.mod``), with lines."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join([*package[: len(package) - node.level + 1], *([module] if module else [])])
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _family(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE.name and len(parts) > 1 and parts[1] in FAMILIES else None


def _foreign(paths: list[Path], own: str | None) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in paths
        for module, line in _imported(path)
        if _family(module) not in (None, own)
    ]


def test_the_families_are_found() -> None:
    assert {"wan2_1", "custom_dit"} <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_imports_no_other_family(family: str) -> None:
    assert _foreign(sorted((PACKAGE / family).rglob("*.py")), family) == []


def test_shared_modules_import_no_family() -> None:
    assert _foreign(sorted(PACKAGE.glob("*.py")), None) == []
