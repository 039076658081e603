"""The per-user patient-hash key is created whole: processes that start at once (two
trainings, two pytest-xdist workers) all read one complete key, never an empty file that
another has created and not yet written (each process here takes half a second to draw its
key, so the others arrive while it does)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path


def _read_key(path: str, start: object, out: object) -> None:
    import os

    os.environ.pop("RADLENS_PATIENT_HASH_KEY", None)
    os.environ["RADLENS_PATIENT_HASH_KEY_FILE"] = path
    import secrets
    import time

    from radlens.training.data import sources

    real = secrets.token_hex

    def slow_token_hex(nbytes: int) -> str:  # widens the window between create and write
        time.sleep(0.5)
        return real(nbytes)

    sources.secrets = type("Slow", (), {"token_hex": staticmethod(slow_token_hex)})  # type: ignore[assignment]
    patient_hash_key = sources.patient_hash_key
    start.wait()  # type: ignore[attr-defined]
    try:
        out.put(patient_hash_key().decode())  # type: ignore[attr-defined]
    except Exception as exc:  # reported, not raised: the parent asserts
        out.put(f"error: {exc}")  # type: ignore[attr-defined]


def test_processes_starting_together_read_one_whole_key(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "patient-hash.key"
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    workers = [context.Process(target=_read_key, args=(str(path), start, out)) for _ in range(6)]
    for worker in workers:
        worker.start()
    start.set()
    keys = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert len(set(keys)) == 1 and len(keys[0]) == 64, keys
    assert path.read_text().strip() == keys[0]
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["patient-hash.key"]  # no staged file
