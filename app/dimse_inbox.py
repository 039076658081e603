"""The Storage SCP's durable inbox (``RADLENS_DIMSE_ACK=queued``, app/dimse.py).

DIMSE on one association is one C-STORE at a time: when the response waits for the
prediction's commit (``RADLENS_DIMSE_ACK=committed``, the default), a series sent on one
association is predicted one instance per model call, and micro-batching never helps it.
With ``queued`` the SCP answers Success once the instance is *durably queued* here, so the
sender streams the series and the model batches it (docs/benchmarks/dimse.md):

- ``put``: the instance as received (file meta + dataset) is written to
  ``RADLENS_DIMSE_INBOX_DIR`` under a temporary name, flushed to disk and renamed; only then
  is the C-STORE answered. Fernet-encrypted (as the outbox, app/outbox.py) when
  ``RADLENS_UID_PSEUDONYM_KEY`` is set: the files hold the whole instance, patient data
  included.
- the service's event loop predicts and commits each queued instance through the one ingest
  path, then deletes its file;
- at start-up the files a previous process left (acknowledged, not yet committed) are
  processed first: nothing acknowledged is lost.

The file name carries the calling AE title (hex) for the audit actor. An instance that
fails *after* it was acknowledged cannot be refused any more: the failure is logged and
recorded as a ``dimse.store`` audit row (status 422; 500 for an unexpected error), and its
file deleted. A database that cannot be reached is waited out (the file stays and is retried);
a file the current RADLENS_UID_PSEUDONYM_KEY cannot decrypt is renamed ``*.unreadable`` and
kept (logged and audited with what to do), deleted only by `radlens purge` once it is older than
RADLENS_RETENTION_DAYS (:func:`unreadable_before`). A service restarted with
``RADLENS_DIMSE_ACK=committed`` still predicts what a queued one left.

Several processes may share one inbox directory (replicas on a shared volume, several DIMSE
listeners; QA 82). Each queued file belongs to the process that queued it (``owner=True``, the
Storage SCP's inbox), from its write until its deletion. At start-up a process takes over only
the files no live process holds (those a process that stopped or crashed left:
:meth:`DimseInbox.adopt`), and removes only the ``*.part`` files no writer holds. Before, a
starting process predicted every queued file, the ones another live process was predicting
included (each was predicted twice), and deleted the other's half-written ``*.part`` files
(its C-STORE then failed). The kernel releases the locks of a process that dies, so its files
are taken over by the next process that starts, or by a running one (app/dimse.py
``ADOPT_INTERVAL_S``).

How a file is held (QA 110): while an owner holds queued files (or writes one) it holds one
exclusive ``flock`` on its *lease* ``.owner-<token>.lock`` (made through a locked ``*.part`` and
renamed, so no process sees it unlocked while its owner lives; deleted, then unlocked, once the
owner holds nothing: an idle inbox is an empty directory, and the next lease has a new token),
and names each file it queues with that token
(``<time>-<random>-<token>-<calling AE hex>.dcm``). A file is held while its token's lease is
locked; a missing or lockable lease is a process that is gone. A file is taken over by renaming
it to the taker's token (atomic: of two processes taking over at once, one rename succeeds,
the other finds the file gone). Until QA 110 the owner held an open, flocked descriptor per
queued file: a CT series of thousands of instances acknowledged faster than the model predicts
them (or thousands left by a crash, all taken over at start) exhausted the open-files limit
(``ulimit -n`` 1024 is common): later C-STOREs were refused, and the queued files the event
loop could then not open were deleted unpredicted, acknowledged to their sender (measured in
docs/benchmarks/dimse.md). A process now holds one descriptor however many files it queued,
plus one per write in progress. Files without a token (queued by an inbox that is no owner, or
by a version before QA 110) are still held by their own ``flock``, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".part"
UNREADABLE_SUFFIX = ".unreadable"
LEASE_PREFIX = ".owner-"  # + token + LEASE_SUFFIX: an owner's lease, flocked while it holds files
LEASE_SUFFIX = ".lock"
TOKEN_LENGTH = 16  # hex digits of an owner's token in its lease's and its files' names


class InboxUnreadableError(ValueError):
    """A queued instance that cannot be decrypted with the current key (or was encrypted and
    no key is set): its message names the file and what to do, nothing of its content."""


class DimseInbox:
    """The spool directory of acknowledged, not yet committed instances.

    ``owner``: this process predicts the instances it queues (the Storage SCP): it holds a
    lease (one ``flock``ed descriptor) for its life and names each file it queues with the
    lease's token, so no other process sharing the directory takes a file over while this one
    lives, however many it queued. Without it (a tool or a test writing files for a service to
    find) the files are left unheld, as a process that stopped leaves them."""

    def __init__(
        self, directory: Path, pseudonym_key: bytes | None, *, owner: bool = False
    ) -> None:
        from radlens.app.outbox import _fernet

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fernet = _fernet(pseudonym_key)
        self.owner = owner
        self._held: set[Path] = set()  # the queued files this process holds
        self._writing = 0  # puts in progress (each will hold a file)
        self._held_lock = threading.Lock()  # put runs on association threads
        # an owner's lease while it holds files or writes one (else none: an idle inbox is an
        # empty directory); a new token each time it is made
        self.token: str | None = None
        self._lease: int | None = None
        for path in self.directory.glob(f"*{PARTIAL_SUFFIX}"):  # never acknowledged
            _remove_unless_held(path)  # another process's write in progress is left alone

    def put(self, data: bytes, calling: str) -> Path:
        """Write ``data`` durably; returns its path (the C-STORE may be answered after)."""
        stored = self._fernet.encrypt(data) if self._fernet is not None else data
        held = ""
        if self.owner:
            with self._held_lock:
                held = f"{self._leased()}-"
                self._writing += 1
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}-{held}{calling.encode().hex()}.dcm"
        path = self.directory / name
        # through <name>.part, locked while written, fsynced, renamed; on a full disk nothing
        # is left (the C-STORE is refused)
        from radlens.app.outbox import _write_locked

        written = False
        try:
            os.close(_write_locked(path, stored))  # locked until renamed; then its name holds it
            written = True
        finally:
            if self.owner:
                with self._held_lock:
                    self._writing -= 1
                    if written:
                        self._held.add(path)
                    self._unlease_if_idle()
        return path

    def _leased(self) -> str:
        """This owner's token, its lease made first when it holds none (``_held_lock`` held):
        written as a locked ``*.part`` and renamed with its lock, so no process ever sees it
        unlocked while this one lives."""
        if self.token is None:
            token = uuid.uuid4().hex[:TOKEN_LENGTH]
            self._lease = _new_lease(_lease_path(self.directory, token))
            self.token = token
        return self.token

    def _unlease_if_idle(self) -> None:
        """Delete, then unlock, the lease once this owner holds no file and writes none
        (``_held_lock`` held): a process that looks after finds it gone."""
        if self._held or self._writing or self.token is None:
            return
        lease, token = self._lease, self.token
        self._lease, self.token = None, None
        # the volume went away: the lock still goes, and the next adopt removes the file
        with contextlib.suppress(OSError):
            _lease_path(self.directory, token).unlink(missing_ok=True)
        if lease is not None:
            os.close(lease)

    def adopt(self) -> tuple[list[Path], int]:
        """Take over the queued files no live process holds (those a stopped or crashed
        process left, or none held them); returns them, oldest first, and the number left to
        the live processes that hold the others. An owner renames each to its own token (the
        path returned is the new one); of two processes taking one over at once, one does."""
        adopted, others = [], 0
        alive: dict[str, bool] = {}  # per token seen in this pass
        for path in sorted(self.directory.glob("*.dcm")):
            token = _token(path)
            if token is not None:
                if token == self.token:  # this process's own (queued now: put spawns it)
                    continue
                if token not in alive:
                    alive[token] = _lease_held(self.directory, token)
                if alive[token]:
                    others += 1
                    continue
                taken = self._take(path)
            else:  # held by its own flock (an earlier version's, or unheld)
                fd = _lock_if_free(path)
                if fd is None:
                    others += int(path.exists())
                    continue
                try:
                    taken = self._take(path)
                finally:
                    os.close(fd)
            if taken is not None:
                adopted.append(taken)
        # the leases of processes that are gone (their files are taken over above)
        own = _lease_path(self.directory, self.token) if self.token is not None else None
        for lease in self.directory.glob(f"{LEASE_PREFIX}*{LEASE_SUFFIX}"):
            if lease != own:
                _remove_unless_held(lease)
        return adopted, others

    def _take(self, path: Path) -> Path | None:
        """``path`` renamed to this owner's token (an inbox that is no owner: as it is); None
        when it is gone (another process took it over, or it was finished)."""
        if not self.owner:
            return path if path.exists() else None
        fields = path.name[: -len(".dcm")].split("-")
        if len(fields) >= 3 and len(fields[0]) == 20 and fields[0].isdigit():
            stamp, random, calling = fields[0], fields[1], fields[-1]
        else:  # a name put can not have made (copied in by hand): its time, no AE title
            queued = _queued_at(path)
            if queued is None:
                return None
            stamp = f"{int(queued * 1e9):020d}"
            random, calling = uuid.uuid4().hex[:12], b"unknown".hex()
        with self._held_lock:
            taken = path.with_name(f"{stamp}-{random}-{self._leased()}-{calling}.dcm")
            try:
                os.rename(path, taken)
            except FileNotFoundError:
                self._unlease_if_idle()
                return None
            self._held.add(taken)
        return taken

    def pending(self) -> list[Path]:
        """The queued instances this process holds (an inbox that is no ``owner``: every
        queued file), oldest first."""
        if not self.owner:
            return sorted(self.directory.glob("*.dcm"))
        with self._held_lock:
            return sorted(p for p in self._held if p.suffix == ".dcm")

    def read(self, path: Path) -> bytes:
        """The instance's bytes (decrypted); raises InboxUnreadableError when they cannot be
        (the key changed or went: the file must not be deleted, see :meth:`set_aside`), and
        OSError when the file cannot be read now (the caller keeps it and tries again)."""
        return _decrypted(path, self._fernet)

    def set_aside(self, path: Path) -> Path:
        """Rename an instance that cannot be read now out of the queue (``*.unreadable``):
        acknowledged to its sender, it is kept for whoever holds the right key."""
        kept = path.with_name(path.name + UNREADABLE_SUFFIX)
        os.replace(path, kept)
        self._release(path)
        return kept

    @staticmethod
    def calling_ae(path: Path) -> str:
        try:
            return bytes.fromhex(path.stem.rsplit("-", 1)[1]).decode()
        except (IndexError, ValueError):
            return "unknown"

    def remove(self, path: Path) -> None:
        """Delete a finished instance's file, then release it."""
        path.unlink(missing_ok=True)
        self._release(path)

    def _release(self, path: Path) -> None:
        with self._held_lock:
            self._held.discard(path)
            self._unlease_if_idle()

    def close(self) -> None:
        """Release every file still held (shutting down): the next process takes them over
        (the lease is deleted, then unlocked)."""
        with self._held_lock:
            self._held.clear()
            self._writing = 0
            self._unlease_if_idle()

    def __len__(self) -> int:
        return len(self.pending())


def _lease_path(directory: Path, token: str) -> Path:
    return directory / f"{LEASE_PREFIX}{token}{LEASE_SUFFIX}"


def _token(path: Path) -> str | None:
    """The owner token a queued file's name carries (``<time>-<random>-<token>-<AE>.dcm``);
    None for a name without one (an inbox that is no owner's, or before QA 110)."""
    fields = path.name.split(".", 1)[0].split("-")
    if len(fields) == 4 and len(fields[2]) == TOKEN_LENGTH:
        return fields[2]
    return None


def _new_lease(path: Path) -> int:
    """A lease made at ``path``: an empty file, locked as ``*.part`` before it is renamed
    there (its lock goes with it); returns its locked descriptor. Not fsynced: a lease means
    nothing after a crash (its lock is gone then)."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    for _attempt in range(3):
        fd = os.open(partial, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(partial, path)
        except FileNotFoundError:  # removed by a starting process's clean-up before the lock
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        return fd
    raise OSError(f"{partial.name} was removed while being made")


def _lease_held(directory: Path, token: str) -> bool:
    """Whether the process whose token this is lives: its lease exists and is locked."""
    return held_by_another(_lease_path(directory, token))


def _lock_if_free(path: Path) -> int | None:
    """An open descriptor of ``path`` with an exclusive flock, or None when another process
    (or another inbox of this one) holds it or it is gone (deleted by the holder, which
    deletes before it releases)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: a live process's
        os.close(fd)
        return None
    try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        same = False
    if not same or os.fstat(fd).st_nlink == 0:  # deleted (or replaced) since it was opened
        os.close(fd)
        return None
    return fd


def _remove_unless_held(path: Path) -> None:
    """Delete a ``*.part`` file unless a writer holds it (app/outbox.py ``_write_locked``
    locks it while it writes), or a lease unless its owner lives."""
    fd = _lock_if_free(path)
    if fd is None:
        return
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def held_by_another(path: Path) -> bool:
    """Whether a live process (or another inbox of this one) holds ``path`` now: a queued
    file named with an owner's token while that owner's lease is locked, any other file while
    its own flock is held."""
    token = _token(path) if path.suffix == ".dcm" else None
    if token is not None:
        return path.exists() and _lease_held(path.parent, token)
    fd = _lock_if_free(path)
    if fd is None:
        return path.exists()
    os.close(fd)
    return False


def _decrypted(path: Path, fernet: Any) -> bytes:
    """A queued file's instance bytes (see :meth:`DimseInbox.read`)."""
    data = path.read_bytes()
    if fernet is None:
        if data[128:132] != b"DICM":
            raise InboxUnreadableError(
                f"{path.name} is encrypted, and RADLENS_UID_PSEUDONYM_KEY is unset: set "
                "the key it was queued under, and move the file back to *.dcm"
            )
        return data
    from cryptography.fernet import InvalidToken

    try:
        return bytes(fernet.decrypt(data))
    except InvalidToken:
        raise InboxUnreadableError(
            f"{path.name} was queued under another RADLENS_UID_PSEUDONYM_KEY: set that "
            "key, and move the file back to *.dcm"
        ) from None


# How much earlier than a queued file's name says a prediction may be dated and still count as
# made of that file (by :func:`queued_digests_before`'s caller, app/audit.py): the name's time
# is the queueing process's clock, ``created_at`` the predicting one's (another replica's, for a
# file taken over). A prediction of the same bytes made before the file was queued is another
# reception's (the instance sent again, or by a second sender), never this file's: its file is
# still owed a prediction and is kept (QA 82: it was deleted with that older prediction).
QUEUED_BEFORE_PREDICTION_SLACK_S = 60.0


def queued_at(path: Path) -> float | None:
    """When ``path`` was queued (seconds since the epoch), see :func:`_queued_at`."""
    return _queued_at(path)


def _queued_at(path: Path) -> float | None:
    """When ``path`` was queued (seconds since the epoch): its name's time, else its
    modification time; None when it is gone."""
    stamp = path.name.split("-", 1)[0]
    if len(stamp) == 20 and stamp.isdigit():
        return int(stamp) / 1e9
    try:
        return path.stat().st_mtime
    except OSError:
        return None  # removed since listed


def unreadable_before(directory: Path, before: float) -> list[Path]:
    """Retention (`radlens purge`, app/audit.py): the instances set aside as unreadable
    (``*.unreadable``, see :meth:`DimseInbox.set_aside`) that were queued before ``before``
    (seconds since the epoch; the time is the file name's, else its modification time). They
    hold whole instances, patient data included, that no prediction will ever come from unless
    someone restores the key: past the retention period they are deleted like the predictions.
    Queued ``*.dcm`` files are not: acknowledged to their sender and owed a prediction, a service
    predicts them at its next start. A directory that does not exist holds nothing."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob(f"*{UNREADABLE_SUFFIX}")):
        queued = _queued_at(path)
        if queued is not None and queued < before:
            found.append(path)
    return found


def queued_digests_before(
    directory: Path, before: float, pseudonym_key: bytes | None
) -> dict[str, list[Path]]:
    """Retention (`radlens purge`, app/audit.py): the queued ``*.dcm`` files queued before
    ``before``, by the sha256 of their instance's bytes -- the ``input_sha256`` of the
    prediction made of them. A file left by a crash between its prediction's commit and its
    deletion is predicted again at the service's next start; once that prediction is purged,
    the replay would store it again, so the purge deletes such files with the predictions
    (matched by this digest, and only by a prediction made after the file was queued:
    :data:`QUEUED_BEFORE_PREDICTION_SLACK_S`). Files this key cannot read are left out (the
    service sets them aside), and so are the files a live process holds (QA 82: a replica
    sharing the inbox is predicting them; a leftover is held by no one). A directory that does
    not exist holds nothing."""
    if not directory.is_dir():
        return {}
    from radlens.app.outbox import _fernet

    fernet = _fernet(pseudonym_key)
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.glob("*.dcm")):
        queued = _queued_at(path)
        if queued is None or queued >= before or held_by_another(path):
            continue
        try:
            data = _decrypted(path, fernet)
        except (InboxUnreadableError, OSError):
            continue
        found.setdefault(hashlib.sha256(data).hexdigest(), []).append(path)
    return found


def describe(exc: Any) -> str:
    """What a log line may say about a failure: its title, never a detail quoting input."""
    return str(getattr(exc, "title", type(exc).__name__))
