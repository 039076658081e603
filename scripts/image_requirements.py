"""Print the pinned requirements of the container image, one per line, from pyproject.toml.

usage: python scripts/image_requirements.py cpu|gpu [pyproject.toml]

The Dockerfile installs these first (a layer that survives code changes), then radlens itself
with --no-deps. For ``cpu`` the TensorFlow pin becomes the same version of TensorFlow's
CPU-only wheel (``tensorflow-cpu``, about 0.6 GB smaller installed, no CUDA kernels); for
``gpu`` the ``gpu`` extra (``tensorflow[and-cuda]``) is added.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

EXTRAS = ("cpu", "gpu")


def requirements(pyproject: dict, extras: str) -> list[str]:
    """The image's requirement lines for ``extras`` (``cpu`` or ``gpu``)."""
    if extras not in EXTRAS:
        raise ValueError(f"extras must be one of {EXTRAS}. Received: {extras!r}")
    project = pyproject["project"]
    lines = list(project["dependencies"]) + list(project["optional-dependencies"][extras])
    if extras == "gpu":  # tensorflow[and-cuda]==V replaces tensorflow==V
        return [line for line in lines if not re.match(r"tensorflow\s*==", line)]
    cpu = [re.sub(r"^tensorflow\s*==", "tensorflow-cpu==", line) for line in lines]
    if cpu == lines:
        raise ValueError(
            "no 'tensorflow==VERSION' pin in pyproject.toml to swap for tensorflow-cpu"
        )
    return cpu


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    path = Path(argv[1] if len(argv) == 2 else "pyproject.toml")
    try:
        lines = requirements(tomllib.loads(path.read_text()), argv[0])
    except (OSError, ValueError, KeyError) as exc:
        print(f"image_requirements: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
