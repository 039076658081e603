"""One logger naming convention in the service and the CLI: ``logging.getLogger(__name__)``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_app_and_cli_loggers_are_named_after_their_module() -> None:
    calls = []
    for package in ("app", "cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger"
                ):
                    calls.append((path.relative_to(ROOT), ast.unparse(node)))
    assert len(calls) >= 5  # the scan really finds the modules' loggers
    named_otherwise = [
        (str(p), call)
        for p, call in calls
        if call != "logging.getLogger(__name__)" and call not in CONFIGURED
    ]
    assert named_otherwise == []


# other loggers a module configures (never logs on): a library's level, training's records filtered
CONFIGURED = {
    "logging.getLogger('highdicom')",  # app/dicom_outputs.py: its INFO lines quote source UIDs
    "logging.getLogger('pynetdicom')",  # app/dicomlog.py: its DEBUG lines quote UIDs as received
    "logging.getLogger('pynetdicom.utils')",  # app/dicomlog.py: the value of a bad UID left out
    "logging.getLogger('radlens.training.data.sources')",  # cli/data_cmds.py: skips reported once
    "logging.getLogger('radlens.training.data.series')",
    "logging.getLogger('uvicorn.access')",  # app/auth.py: a key's secret redacted from its lines
}
