"""`make run`: from a fresh clone to a serving radlens, with nothing else installed.

Steps, each a `radlens` command (the same ones the README and docker-compose use):
  1. `radlens db upgrade`            - create/migrate the database (SQLite under var/ by default)
     when there is no active API key: `radlens keys create` (the key is printed once)
  2. when the model store is empty:  `radlens demo-data var/demo-data` and
     `radlens train --config training/configs/demo.yaml --data var/demo-data`
  3. `radlens serve`                 - the API on http://127.0.0.1:8000 (RADLENS_HOST,
                                       RADLENS_PORT), Swagger UI at /docs

`--no-serve` stops after step 2 (CI runs it that way to exercise the set-up path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RADLENS = str(Path(sys.executable).with_name("radlens"))
DEMO_DATA = REPO / "var" / "demo-data"
DEMO_CONFIG = REPO / "training" / "configs" / "demo.yaml"


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def radlens(*args: str, capture: bool = False) -> str:
    result = subprocess.run(
        [RADLENS, *args], cwd=REPO, text=True, capture_output=capture, check=False
    )
    if result.returncode != 0:
        if capture:
            sys.stderr.write(result.stderr)
        sys.exit(f"quickstart: `radlens {' '.join(args)}` failed (exit {result.returncode})")
    return result.stdout if capture else ""


def store_is_empty() -> bool:
    """No finished model: a version a killed run left unfinished is never served, so the demo
    model is trained again rather than start-up failing on it."""
    listing = json.loads(radlens("models", "list", "--json", capture=True) or "[]")
    return not any(not entry.get("unfinished") for entry in listing)


def ensure_api_key() -> None:
    """Create an API key when none is active and print it (the API refuses requests without)."""
    keys = json.loads(radlens("keys", "list", "--json", capture=True) or "[]")
    if any(key["revoked_at"] is None for key in keys):
        step("An API key already exists (radlens keys list); create more with radlens keys create")
        return
    step("Creating an API key (radlens keys create --name quickstart --scopes predict,read)")
    key = radlens(
        "keys", "create", "--name", "quickstart", "--scopes", "predict,read", capture=True
    ).strip()
    print(f"    API key, shown only now (store it): {key}")
    print("    Send it as 'Authorization: Bearer <key>' (Swagger UI: the Authorize button)")


def serving_url() -> str | None:
    """Where `radlens serve` will listen: RADLENS_HOST and RADLENS_PORT, read by the service's
    own settings class (this process runs in the venv that has radlens installed); None when
    the settings are invalid (`radlens serve` then says which, in one line)."""
    from pydantic import ValidationError

    from radlens.app.settings import Settings

    try:
        settings = Settings()
    except ValidationError:
        return None
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-serve", action="store_true", help="set up, then stop")
    parser.add_argument(
        "--data-dir", type=Path, default=DEMO_DATA, help="where the demo data set is written"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="demo training epochs (default: training/configs/demo.yaml's); the test suite "
        "trains fewer",
    )
    args = parser.parse_args(argv)
    demo_data: Path = args.data_dir
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    step("Migrating the database (radlens db upgrade)")
    radlens("db", "upgrade")
    ensure_api_key()

    if store_is_empty():
        if not (demo_data / "labels.csv").exists():
            step(f"No finished model in the store: writing the demo data set to {demo_data}")
            radlens("demo-data", str(demo_data), "--overwrite")
        step("Training the demo model (ResNet50 at 64 px, a few minutes on 2 cores)")
        epochs = [] if args.epochs is None else ["--epochs", str(args.epochs)]
        radlens("train", "--config", str(DEMO_CONFIG), "--data", str(demo_data), *epochs)
    else:
        step("Model store already holds a model: skipping demo training")
    radlens("models", "list")

    if args.no_serve:
        step("Set-up finished (--no-serve)")
        return 0
    url = serving_url()
    step(f"Serving on {url} (Swagger UI: {url}/docs)" if url else "Serving (radlens serve)")
    os.execv(RADLENS, [RADLENS, "serve"])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
