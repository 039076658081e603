"""docs/internals.md's DIMSE inbox entry names what app/dimse_inbox.py defines (QA 92): QA 82's
lock functions (adopt, the flock helpers, held_by_another) were missing from it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the private helpers the entry names: how the inbox's files are locked and cleaned up
LOCKS = ("_lock_if_free", "_remove_unless_held")


def _defined() -> set[str]:
    """The public functions, classes and DimseInbox methods of app/dimse_inbox.py, and LOCKS."""
    tree = ast.parse((ROOT / "app" / "dimse_inbox.py").read_text())
    names = set(LOCKS)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            names.add(node.name)
        if isinstance(node, ast.ClassDef) and node.name == "DimseInbox":
            names.update(
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_")
            )
    return names


def test_the_dimse_inbox_entry_names_every_function() -> None:
    text = (ROOT / "docs" / "internals.md").read_text()
    start = text.index("# app/dimse.py — ")
    end = text.index("\n# app/", start + 1)
    entry = text[start:end]
    names = _defined()
    assert {"adopt", "held_by_another", "close", "DimseInbox"} <= names  # the parse found them
    missing = sorted(name for name in names if name not in entry)
    assert not missing, f"docs/internals.md's app/dimse.py entry does not name {missing}"
