"""radlens installs under one top-level name (issue 14): no clash with other distributions'
``app``/``models``/``training``/``cli``/``migrations`` packages."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

REPO_ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("app", "models", "training", "cli", "migrations")
CODE_DIRS = (*FOLDERS, "tests", "bench", "scripts")


def _python_files() -> list[Path]:
    files = [
        path
        for folder in CODE_DIRS
        for path in (REPO_ROOT / folder).rglob("*.py")
        if "store" not in path.relative_to(REPO_ROOT).parts
    ]
    assert len(files) > 100, "the scan found too few files to mean anything"
    return files


def _top_level_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_code_imports_a_bare_top_level_package() -> None:
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{line}: import {name}"
        for path in _python_files()
        for line, name in _top_level_imports(ast.parse(path.read_text(), str(path)))
        if name.split(".")[0] in FOLDERS
    ]
    assert offenders == [], "import through radlens.<package> instead:\n" + "\n".join(offenders)


def test_the_links_point_at_the_top_level_folders() -> None:
    for folder in FOLDERS:
        link = REPO_ROOT / "radlens" / folder
        assert link.is_symlink(), f"radlens/{folder} should be a link to ../{folder}"
        assert link.resolve() == (REPO_ROOT / folder).resolve()


def test_setuptools_finds_only_radlens_packages() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(
        where=str(REPO_ROOT),
        include=config["packages"]["find"]["include"],
        exclude=config["packages"]["find"]["exclude"],
    )
    assert {name.split(".")[0] for name in found} == {"radlens"}
    for folder in FOLDERS:
        assert f"radlens.{folder}" in found
    assert not [name for name in found if name.startswith("radlens.models.store")]
    assert config["package-data"].keys() <= set(found)


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_package_is_the_folder(folder: str) -> None:
    import importlib

    module = importlib.import_module(f"radlens.{folder}")
    assert Path(module.__file__).resolve().parent == (REPO_ROOT / folder).resolve()
