"""A spool write that fails (a full disk) leaves nothing behind: before, the outbox kept the
cut-short ``.part`` (1 MB of a Secondary Capture on a 1 MB volume: every later result failed
to queue until a restart) and a payload without its state file, and the DIMSE inbox its
``.part`` (QA round 33)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from tests.app.test_outbox import make_outbox, outbox_settings


def failing_fsync(after: int) -> Any:
    """os.fsync that fails with ENOSPC from its ``after``-th call on (0: at once)."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    return fsync


@pytest.mark.parametrize("after", [0, 1], ids=["payload-fails", "state-fails"])
def test_a_failed_enqueue_leaves_no_file_and_the_next_one_is_queued(
    tmp_path: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    from radlens.app import outbox as outbox_module

    spool = tmp_path / "spool"
    outbox = make_outbox(outbox_settings("sqlite://", model_store, spool, "PACS@h:1"))
    with monkeypatch.context() as patched:
        patched.setattr(outbox_module.os, "fsync", failing_fsync(after))
        with pytest.raises(OSError, match="No space"):
            outbox.enqueue("00000000-0000-4000-8000-000000000001", "sr", b"x" * 4096)
    assert list(spool.iterdir()) == []
    assert outbox.enqueue("00000000-0000-4000-8000-000000000002", "sr", b"y") == 1
    assert [e.prediction_id[-1] for e in outbox.entries()] == ["2"]
    assert len(list(spool.iterdir())) == 2  # its payload and its state


def test_a_failed_inbox_write_leaves_no_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app import dimse_inbox
    from radlens.app.dimse_inbox import DimseInbox

    inbox = DimseInbox(tmp_path / "inbox", None)
    with monkeypatch.context() as patched:
        patched.setattr(dimse_inbox.os, "fsync", failing_fsync(0))
        with pytest.raises(OSError, match="No space"):
            inbox.put(b"x" * 4096, "MODALITY")
    assert list((tmp_path / "inbox").iterdir()) == []
    assert inbox.pending() == [] and inbox.put(b"y", "MODALITY").is_file()
