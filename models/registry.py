"""The model store: versioned, verifiable model artifacts on disk.

Layout (``root`` is :func:`default_store_path` unless given)::

    root/<name>/<version>/model.keras     the Keras model (custom layers registered)
    root/<name>/<version>/manifest.json   models.manifest.ModelManifest
    root/<name>/<version>/openvino-<id>/  a converted runtime (models.runtime), optional
    root/<name>/<version>/.unfinished     present while the run that saved the version
                                          still attaches its parts (OOD detector, runtime)
    root/.staging/                        saves in progress (never read as models)

A save is atomic: ``model.keras`` is written into a fresh directory under ``.staging``, its
sha256 computed, then -- holding an exclusive lock on ``root/.lock`` so concurrent savers
agree on version numbers -- the next version is chosen, ``manifest.json`` written and the
directory renamed to ``<name>/<version>`` in one ``rename(2)``. A reader therefore sees a
version complete or not at all; a save that fails or is killed leaves at most a directory
under ``.staging``, which the next save or conversion into the store removes (each directory
there is ``flock``-ed by the process writing it, so only a dead writer's is taken). A load
re-computes the sha256 and refuses a model whose preprocessing version this radlens cannot
reproduce (:func:`check_preprocessing_version`; the artifact's layout is in README.md,
"Training your own model", and docs/internals.md).

Every manifest is sealed (``models.manifest.seal``): a load refuses a manifest whose fields
changed since it was sealed, naming them, and with ``RADLENS_MODEL_SIGNING_KEY`` set also one
whose HMAC does not verify. Adding a converted runtime to an existing version
(:meth:`ModelRegistry.add_runtime`) keeps its name, version, ``model.keras`` and hash: the new
files go into a fresh directory beside ``model.keras`` (fsynced), then ``manifest.json`` is
replaced in one ``rename(2)`` with a manifest that lists them and is sealed again; a reader
sees the old manifest or the new one, never a mix.

Training attaches such parts (the OOD detector, the OpenVINO runtime) right after its save,
which takes minutes on real data: it saves with ``finish_later=True``, so the version carries
an ``.unfinished`` marker (``flock``-ed by the training process) until :meth:`finish` removes
it. The newest model, or a name's highest version, is the newest *finished* one: a service
starting meanwhile serves the version before, never one without its detector. A run that
stops before it finishes leaves the marker; ``radlens models list`` names such a version
"unfinished (abandoned)" and ``radlens models finish`` finishes it by hand.

Keras and TensorFlow are imported only by :meth:`ModelRegistry.save`,
:meth:`ModelRegistry.load` and :func:`predict_scores`, so listing the store is fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radlens.models.decision import decide
from radlens.models.errors import (
    ConfigurationError,
    InvalidImageError,
    ModelCorruptError,
    ModelIncompatibleError,
    ModelNotFoundError,
    ModelStoreError,
    ModelStoreWriteError,
    ModelUnfinishedError,
)
from radlens.models.manifest import (
    INTEGRITY_FIELD,
    MANIFEST_FILE,
    MODEL_FILE,
    ModelManifest,
    check_model_name,
    check_seal,
    framework_versions,
    jsonable,
    seal,
    utc_now_iso,
)

if TYPE_CHECKING:
    import keras

__all__ = [
    "LoadedModel",
    "ModelManifest",
    "ModelRegistry",
    "check_preprocessing_version",
    "decide",
    "default_store_path",
    "file_sha256",
    "predict_scores",
    "signing_key_from_env",
]

# Locks this process holds: a staging directory it writes, or an unfinished version's marker
# (absolute path -> open descriptor with an exclusive flock, or _NO_LOCK). Released when the
# path is renamed into place or removed; a process that dies releases them all, which is how a
# leftover is told from a save in progress.
_HELD: dict[Path, int] = {}

log = logging.getLogger(__name__)

STORE_ENV = "RADLENS_MODEL_STORE"
SIGNING_KEY_ENV = "RADLENS_MODEL_SIGNING_KEY"
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"
UNFINISHED_FILE = ".unfinished"
_REF = re.compile(r"^(?P<name>[^:]+)(?::(?P<version>[^:]*))?$")
_VERSION_DIR = re.compile(r"[1-9][0-9]*")  # a version's directory: "3", never "03" or "²"


def default_store_path() -> Path:
    """Where models are stored: ``$RADLENS_MODEL_STORE``, else ``<repo>/models/store``.

    The repository root is the parent of the ``models`` package, so a fresh clone works
    with nothing configured.
    """
    configured = os.environ.get(STORE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    from radlens import models

    return Path(models.__file__).resolve().parents[1] / "models" / "store"


MIN_SIGNING_KEY_CHARS = 16  # as the service's settings require (app/settings.py)


def signing_key_from_env() -> bytes | None:
    """``$RADLENS_MODEL_SIGNING_KEY`` as bytes, or None when unset or empty.

    Raises:
        ConfigurationError: a key shorter than the service accepts: a model sealed with it
            here (train, seal, convert) would be served by no ``radlens serve``.
    """
    value = os.environ.get(SIGNING_KEY_ENV, "")
    if value and len(value) < MIN_SIGNING_KEY_CHARS:
        raise ConfigurationError(
            f"{SIGNING_KEY_ENV} must be at least {MIN_SIGNING_KEY_CHARS} characters, as "
            "radlens serve requires (e.g. `python -c 'import secrets; "
            f"print(secrets.token_urlsafe(32))'`). Received a value of {len(value)} characters"
        )
    return value.encode("utf-8") if value else None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A model loaded from the store, with its manifest and directory."""

    model: keras.Model
    manifest: ModelManifest
    path: Path

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` the model expects (pass as ``size=`` to preprocessing)."""
        return self.manifest.input_size


def _current_preprocessing_version() -> str:
    # Imported at call time: models.preprocessing pulls in pydicom and Pillow.
    return str(importlib.import_module("radlens.models.preprocessing").PREPROCESSING_VERSION)


def _readable_preprocessing_versions() -> tuple[str, ...]:
    """Older versions preprocessing still reproduces exactly (``preprocess(version=...)``):
    a model trained with one of them loads and is fed as it was trained."""
    module = importlib.import_module("radlens.models.preprocessing")
    return tuple(str(v) for v in module.SUPPORTED_PREPROCESSING_VERSIONS)


def check_preprocessing_version(manifest: ModelManifest) -> None:
    """Refuse a model trained with a preprocessing version this radlens cannot reproduce.

    The current version and every older one in ``SUPPORTED_PREPROCESSING_VERSIONS`` are
    accepted; the service then preprocesses with the manifest's version.

    Raises:
        ModelIncompatibleError: naming the model and both versions.
    """
    current = _current_preprocessing_version()
    readable = {current, *_readable_preprocessing_versions()}
    if manifest.preprocessing_version not in readable:
        raise ModelIncompatibleError(
            f"model {manifest.ref} was trained with preprocessing version "
            f"{manifest.preprocessing_version!r}; this radlens uses {current!r} and also "
            f"reads {', '.join(repr(v) for v in sorted(readable - {current})) or 'no other'}; "
            "retrain the model with this radlens"
        )


class ModelRegistry:
    """Save, list, resolve and load versioned models under one store directory.

    Args:
        root: the store directory; created on first save. Reading a store that does not
            exist behaves as an empty store.
        signing_key: HMAC key for manifest seals; None reads ``$RADLENS_MODEL_SIGNING_KEY``
            (unset: seals carry digests only).
    """

    def __init__(self, root: Path | str, *, signing_key: bytes | None = None) -> None:
        if not isinstance(root, str | os.PathLike):
            raise TypeError(f"root must be a path. Received: {root!r}")
        self.root = Path(root).expanduser()
        self.signing_key = signing_key if signing_key is not None else signing_key_from_env()

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # --- writing --------------------------------------------------------------------------

    def save(
        self,
        model: keras.Model,
        *,
        name: str,
        architecture: str,
        class_names: Sequence[str],
        threshold: float | None,
        window: str | None,
        filters: Sequence[str],
        metrics: dict[str, dict[str, Any]],
        training_config: dict[str, Any],
        data_fingerprint: str | None,
        description: str = "",
        version: int | None = None,
        data_split: dict[str, Any] | None = None,
        leakage_check: dict[str, Any] | None = None,
        calibration: dict[str, Any] | None = None,
        findings: dict[str, Any] | None = None,
        intended_use: dict[str, Any] | None = None,
        finish_later: bool = False,
    ) -> ModelManifest:
        """Store a model as a new version, atomically, and return its manifest.

        The manifest is completed automatically with ``created_at``, the input shape read
        from the model, this radlens's ``PREPROCESSING_VERSION``, the framework versions and
        the sha256 of the written ``model.keras``.

        Args:
            model: a built Keras model with input ``(None, H, W, C)`` and one output unit
                per class.
            name: the model's name (a safe slug, see ``models.manifest.NAME_PATTERN``).
            architecture: the builder used (``"resnet50"``, ``"simple_cnn"``, ...).
            class_names: one per output unit; index 1 is the positive class of a binary model.
            threshold: positive-class decision threshold in [0, 1] (binary), or None.
            window: the window preset used in preprocessing, or None.
            filters: the fixed filter front-end names.
            metrics: ``{"val": {...}, "test": {...}}``; numpy numbers are converted and
                NaN becomes null.
            training_config: the run's configuration (JSON-serialisable).
            data_fingerprint: identifies the training data, or None.
            description: free text.
            version: an explicit version number, or None for the next one (1 for a new name).
            data_split: how the data was split (``ModelManifest.data_split``), or None.
            leakage_check: the patient-leakage check's result, or None.
            calibration: the score calibration's record, or None.
            findings: a multi-label model's finding record (``ModelManifest.findings``:
                label mode, no-finding name, a threshold per class name), or None.
            intended_use: ``models.intended_use.intended_use_record(...)``, or None ("not
                stated").
            finish_later: the version is published with an ``.unfinished`` marker that this
                process holds until :meth:`finish` (it is nobody's newest model meanwhile):
                for a caller that attaches an OOD detector or a runtime next.

        Returns:
            The manifest as written to ``<root>/<name>/<version>/manifest.json``.

        Raises:
            ConfigurationError: a bad name, version or field value, class names that do not
                match the model's output, or values with no JSON form.
            ModelStoreError: the explicit ``version`` exists already.
        """
        check_model_name(name, ConfigurationError)
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise ConfigurationError(f"version must be an integer >= 1. Received: {version!r}")
        input_shape = _model_input_shape(model)
        outputs = _model_output_units(model)
        if outputs != len(class_names):
            raise ConfigurationError(
                f"the model has {outputs} output units but {len(class_names)} class names "
                f"were given. Received: class_names={list(class_names)!r}"
            )
        try:
            fields = jsonable(
                {
                    "name": name,
                    "version": version or 1,
                    "created_at": utc_now_iso(),
                    "architecture": architecture,
                    "input_shape": input_shape,
                    "class_names": list(class_names),
                    "threshold": threshold,
                    "preprocessing_version": _current_preprocessing_version(),
                    "window": window,
                    "filters": list(filters),
                    "metrics": metrics,
                    "training_config": training_config,
                    "data_fingerprint": data_fingerprint,
                    "framework_versions": framework_versions(),
                    "model_sha256": "0" * 64,  # replaced once model.keras is written
                    "validated_for_clinical_use": False,
                    "description": description,
                    **{
                        key: value
                        for key, value in (
                            ("data_split", data_split),
                            ("leakage_check", leakage_check),
                            ("calibration", calibration),
                        )
                        if value is not None
                    },
                    **({"findings": findings} if findings is not None else {}),
                    "intended_use": intended_use,
                }
            )
        except TypeError as exc:
            raise ConfigurationError(f"the model's manifest cannot be written: {exc}") from None
        # validate everything before the (slow) model write
        ModelManifest.from_dict(fields, error=ConfigurationError)
        name_dir = self.root / name
        if version is not None and (name_dir / str(version)).exists():
            raise ModelStoreError(f"model {name}:{version} exists already in {self.root}")

        with _writing(f"model {name}", self.root):
            staging = self._new_staging(name)
            marker = staging / UNFINISHED_FILE
            try:
                if finish_later:  # before the rename: the version is never seen finished early
                    _write_text_synced(marker, json.dumps({"pid": os.getpid()}) + "\n")
                    _hold(marker)
                model_path = staging / MODEL_FILE
                model.save(model_path)
                _fsync_file(model_path)  # durable before it becomes visible
                fields["model_sha256"] = file_sha256(model_path)
                with self._lock():
                    final_version = version if version is not None else self._next_version(name)
                    target = name_dir / str(final_version)
                    if target.exists():
                        raise ModelStoreError(
                            f"model {name}:{final_version} exists already in {self.root}"
                        )
                    fields["version"] = final_version
                    draft = ModelManifest.from_dict(fields, error=ConfigurationError).to_dict()
                    draft[INTEGRITY_FIELD] = seal(draft, self.signing_key)
                    manifest = ModelManifest.from_dict(draft, error=ConfigurationError)
                    _write_text_synced(staging / MANIFEST_FILE, manifest.to_json())
                    name_dir.mkdir(parents=True, exist_ok=True)
                    os.rename(staging, target)
                    _fsync_dir(name_dir)
                    if finish_later and _holding(marker):  # the same open file, now moved
                        _HELD[_key(target / UNFINISHED_FILE)] = _HELD.pop(_key(marker))
            finally:
                _release(staging)
                _release(marker)
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "saved model %s to %s%s",
            manifest.ref,
            target,
            " (unfinished until its parts are attached)" if finish_later else "",
        )
        return manifest

    def finish(self, ref: str) -> ModelManifest:
        """Finish a version saved with ``finish_later=True``: remove its ``.unfinished``
        marker, so it becomes the newest model (and its name's highest version) to resolve.
        A finished version is left as it is.

        Raises:
            ModelNotFoundError, ModelCorruptError: as :meth:`verify`.
            ModelUnfinishedError: another process (its training run) is still writing it.
        """
        name, version = self.resolve(ref)
        marker = self.root / name / str(version) / UNFINISHED_FILE
        with self._lock():
            manifest = self.verify(name, version)
            if not _holding(marker) and _held_elsewhere(marker):
                raise ModelUnfinishedError(
                    f"{name}:{version} is still being written by its training run "
                    f"({_marker_note(marker)}): let it finish, or stop that run first"
                )
            _release(marker)
            if marker.exists():
                marker.unlink()
                _fsync_dir(marker.parent)
                log.info("finished %s: it may now be served as the newest version", manifest.ref)
        return manifest

    def unfinished(self, name: str, version: int) -> str | None:
        """None for a finished version; else why not: ``"being written"`` (a live process
        holds its marker) or ``"abandoned"`` (the run that saved it stopped first)."""
        marker = self.root / name / str(version) / UNFINISHED_FILE
        if not marker.exists():
            return None
        return "being written" if _holding(marker) or _held_elsewhere(marker) else "abandoned"

    def _is_finished(self, name: str, version: int) -> bool:
        return not (self.root / name / str(version) / UNFINISHED_FILE).exists()

    def check_finished(self, name: str, version: int) -> None:
        """Raise ModelUnfinishedError (saying what to do) for an unfinished version."""
        state = self.unfinished(name, version)
        if state is None:
            return
        raise ModelUnfinishedError(
            f"model {name}:{version} is unfinished ({state}): the training run that saved it "
            + (
                "is still attaching its OOD detector and runtime; wait for it, or serve "
                "another version"
                if state == "being written"
                else "stopped before it attached its OOD detector and runtime; attach them "
                f"(`radlens models ood {name}:{version} ...`, `radlens models convert "
                f"{name}:{version}`) and run `radlens models finish {name}:{version}`, or "
                "serve another version"
            )
        )

    def _new_staging(self, name: str) -> Path:
        """A fresh directory under ``.staging``, locked by this process; what dead writers
        left there is removed first (their locks died with them)."""
        with self._lock():
            staging_root = self.root / STAGING_DIR
            if staging_root.is_dir():
                for entry in staging_root.iterdir():
                    if _holding(entry):
                        if not entry.exists():
                            _release(entry)
                        continue
                    if _held_elsewhere(entry):
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    log.info("removed %s, left by a save or conversion that stopped", entry)
            staging = staging_root / f"{name}-{uuid.uuid4().hex}"
            staging.mkdir(parents=True)
            _hold(staging)
        return staging

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive inter-process lock on the store (choosing a version and renaming)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _next_version(self, name: str) -> int:
        return max(self._version_dirs(name), default=0) + 1

    # --- reading --------------------------------------------------------------------------

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and _is_name(p.name)
        )

    def _version_dirs(self, name: str) -> list[int]:
        name_dir = self.root / name
        if not name_dir.is_dir():
            return []
        # ASCII digits only: str.isdigit() also takes "²" or "١", which int() refuses or reads
        return sorted(
            int(p.name) for p in name_dir.iterdir() if _VERSION_DIR.fullmatch(p.name) and p.is_dir()
        )

    def _read_raw(self, name: str, version: int) -> tuple[Path, bytes]:
        version_dir = self.root / name / str(version)
        if not version_dir.is_dir():
            raise ModelNotFoundError(f"no model {name}:{version} in {self.root}")
        path = version_dir / MANIFEST_FILE
        if path.exists() and not path.is_file():  # a folder, or a named pipe read would block on
            raise ModelCorruptError(f"{path} is not a file")
        try:
            return path, path.read_bytes()
        except FileNotFoundError:
            raise ModelCorruptError(f"{path} is missing") from None

    def _parse(self, name: str, version: int, path: Path, text: bytes) -> ModelManifest:
        try:
            manifest = ModelManifest.from_json(text)
        except ModelCorruptError as exc:
            raise ModelCorruptError(f"{path}: {exc.detail}") from None
        if manifest.name != name or manifest.version != version:
            raise ModelCorruptError(
                f"{path} describes {manifest.ref}, not {name}:{version} (moved or edited?)"
            )
        return manifest

    def read_manifest(self, name: str, version: int) -> ModelManifest:
        """Read and validate ``<name>/<version>/manifest.json`` (its seal is not checked).

        Raises:
            ModelNotFoundError: no such version directory.
            ModelCorruptError: the manifest is missing, not valid JSON, invalid, or names
                another model or version than its directory.
        """
        path, text = self._read_raw(name, version)
        return self._parse(name, version, path, text)

    def check_seal(self, name: str, version: int) -> ModelManifest:
        """Read a version's manifest and check it against its seal (and signature).

        Raises:
            ModelNotFoundError, ModelCorruptError: as :meth:`read_manifest`.
            ModelUnsealedError: a manifest saved before seals existed.
            ModelTamperedError: fields changed since sealing (named), or a bad signature.
        """
        path, text = self._read_raw(name, version)
        manifest = self._parse(name, version, path, text)
        check_seal(json.loads(text), self.signing_key, where=str(path))
        return manifest

    def verify(self, name: str, version: int) -> ModelManifest:
        """Check a version's manifest seal and ``model.keras`` against its sha256.

        Raises:
            ModelNotFoundError: no such version.
            ModelCorruptError: a bad manifest, or ``model.keras`` missing or altered (the
                message gives both digests).
            ModelUnsealedError, ModelTamperedError: see :meth:`check_seal`.
        """
        manifest = self.check_seal(name, version)
        model_path = self.root / name / str(version) / MODEL_FILE
        if not model_path.is_file():
            raise ModelCorruptError(f"{model_path} is missing")
        actual = file_sha256(model_path)
        if actual != manifest.model_sha256:
            raise ModelCorruptError(
                f"sha256 of {model_path} is {actual}, the manifest says {manifest.model_sha256}"
            )
        return manifest

    def runtime_files(self, manifest: ModelManifest, runtime: str) -> dict[str, Path]:
        """The files of a converted runtime listed in ``manifest``, checked against their sha256.

        Returns:
            relative path -> absolute path, for every file of ``runtime``.

        Raises:
            ModelNotFoundError: the manifest lists no such runtime (convert the model first).
            ModelCorruptError: a listed file is missing or altered (named, with both digests).
        """
        entry = manifest.runtimes.get(runtime)
        if entry is None:
            raise ModelNotFoundError(
                f"model {manifest.ref} has no converted {runtime} runtime (run `radlens models "
                f"convert {manifest.ref}`)"
            )
        version_dir = (self.root / manifest.name / str(manifest.version)).resolve()
        found: dict[str, Path] = {}
        for relative, expected in sorted(entry["files"].items()):
            path = (version_dir / relative).resolve()
            if version_dir not in path.parents:
                raise ModelCorruptError(
                    f"{runtime} file {relative!r} of {manifest.ref} is outside its directory"
                )
            if not path.is_file():
                raise ModelCorruptError(f"{path} ({runtime} runtime of {manifest.ref}) is missing")
            actual = file_sha256(path)
            if actual != expected:
                raise ModelCorruptError(
                    f"sha256 of {path} is {actual}, the manifest says {expected}"
                )
            found[relative] = path
        return found

    # --- changing an existing version -------------------------------------------------------

    def seal(self, ref: str | None) -> ModelManifest:
        """Seal a version's manifest as it is now (a deliberate, logged step).

        For a manifest saved before seals existed, or after a deliberate edit (e.g. setting
        ``validated_for_clinical_use`` after a clinical validation). Uses the signing key
        when one is configured. The manifest must still be valid and ``model.keras`` must
        match its ``model_sha256``.

        Raises:
            ModelNotFoundError, ModelCorruptError: as :meth:`read_manifest`, or a
                ``model.keras`` that does not match.
        """
        name, version = self.resolve(ref)
        with self._lock():
            path, text = self._read_raw(name, version)
            manifest = self._parse(name, version, path, text)
            data = manifest.to_dict()
            model_path = path.parent / MODEL_FILE
            if not model_path.is_file() or file_sha256(model_path) != manifest.model_sha256:
                raise ModelCorruptError(
                    f"{model_path} is missing or does not match the manifest's model_sha256; "
                    "refusing to seal"
                )
            data[INTEGRITY_FIELD] = seal(data, self.signing_key)
            sealed = ModelManifest.from_dict(data)
            _replace_manifest(path, sealed)
        log.warning(
            "sealed the manifest of %s as it is now (%s)",
            sealed.ref,
            "signed" if self.signing_key else "unsigned",
        )
        return sealed

    def add_runtime(
        self, ref: str, runtime: str, staged: Path, entry: dict[str, Any]
    ) -> ModelManifest:
        """Attach converted runtime files to an existing version, atomically.

        The version must pass :meth:`verify` first. ``staged`` (a directory on the same
        filesystem, e.g. from :meth:`staging_dir`) is fsynced and renamed to
        ``<version>/<runtime>-<id>/``; then ``manifest.json`` is replaced in one rename by
        the same manifest plus ``runtimes[runtime] = entry + {"files": ...}``, sealed again.
        Name, version, created_at and ``model_sha256`` do not change. A previous conversion's
        directory is removed after the switch.

        Args:
            ref: ``name:version``.
            runtime: e.g. ``"openvino"``.
            staged: directory holding the runtime's files (not nested).
            entry: JSON facts about the conversion (versions, parity...).

        Returns:
            The new manifest.
        """
        name, version = self.resolve(ref)
        version_dir = self.root / name / str(version)
        with self._lock():
            manifest = self.verify(name, version)
            files = sorted(p for p in staged.iterdir() if p.is_file())
            if not files:
                raise ModelStoreError(f"no {runtime} files in {staged}")
            for file in files:
                _fsync_file(file)
            target = version_dir / f"{runtime}-{uuid.uuid4().hex[:12]}"
            os.rename(staged, target)
            _release(staged)
            _fsync_dir(version_dir)
            try:
                data = manifest.to_dict()
                previous = data["runtimes"].get(runtime)
                data["runtimes"][runtime] = jsonable(
                    {
                        **entry,
                        "files": {
                            f"{target.name}/{p.name}": file_sha256(target / p.name) for p in files
                        },
                    }
                )
                data[INTEGRITY_FIELD] = seal(data, self.signing_key)
                updated = ModelManifest.from_dict(data)
                _replace_manifest(version_dir / MANIFEST_FILE, updated)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            # the previous conversion's directory, and any a killed conversion left unlisted
            stale = {Path(p).parts[0] for p in (previous or {}).get("files", {})}
            stale |= _written_here(version_dir, rf"{re.escape(runtime)}-[0-9a-f]{{12}}")
            for old in stale - {target.name}:
                if (version_dir / old).is_dir():
                    shutil.rmtree(version_dir / old, ignore_errors=True)
        log.info("added the %s runtime to %s (%s)", runtime, updated.ref, target.name)
        return updated

    def add_ood_detector(
        self, ref: str, detector_file: Path, entry: dict[str, Any]
    ) -> ModelManifest:
        """Attach an out-of-distribution detector (``models.ood``) to an existing version.

        As :meth:`add_runtime`: the version must pass :meth:`verify`; ``detector_file`` (on
        the store's filesystem, e.g. in :meth:`staging_dir`) is fsynced and renamed to
        ``<version>/ood-<id>.npz``, then ``manifest.json`` is replaced in one rename by the
        same manifest with ``ood = entry + {"files": {name: sha256}}``, sealed again, so the
        seal covers the detector. A previous detector's file is removed after the switch.

        Returns:
            The new manifest.
        """
        name, version = self.resolve(ref)
        version_dir = self.root / name / str(version)
        with self._lock():
            manifest = self.verify(name, version)
            _fsync_file(detector_file)
            target = version_dir / f"ood-{uuid.uuid4().hex[:12]}.npz"
            os.rename(detector_file, target)
            _fsync_dir(version_dir)
            try:
                data = manifest.to_dict()
                previous = data.get("ood") or {}
                data["ood"] = jsonable({**entry, "files": {target.name: file_sha256(target)}})
                data[INTEGRITY_FIELD] = seal(data, self.signing_key)
                updated = ModelManifest.from_dict(data)
                _replace_manifest(version_dir / MANIFEST_FILE, updated)
            except BaseException:
                target.unlink(missing_ok=True)
                raise
            # the previous detector, and any a killed run left unlisted
            stale = set(previous.get("files", {})) | _written_here(
                version_dir, r"ood-[0-9a-f]{12}\.npz"
            )
            for old in stale - {target.name}:
                if Path(old).name == old:
                    (version_dir / old).unlink(missing_ok=True)
        log.info("added an OOD detector (%s) to %s", entry.get("method"), updated.ref)
        return updated

    def ood_detector_file(self, manifest: ModelManifest) -> Path | None:
        """The detector file a manifest lists, checked against its sha256; None when the
        model has no detector.

        Raises:
            ModelCorruptError: the file is missing, outside the version, or altered (both
                digests quoted).
        """
        if not manifest.ood:
            return None
        version_dir = (self.root / manifest.name / str(manifest.version)).resolve()
        files = manifest.ood["files"]
        if len(files) != 1:
            raise ModelCorruptError(
                f"the OOD detector of {manifest.ref} must be one file. Received: {files!r}"
            )
        ((relative, expected),) = files.items()
        path = (version_dir / relative).resolve()
        if path.parent != version_dir:
            raise ModelCorruptError(f"OOD file {relative!r} of {manifest.ref} is outside it")
        if not path.is_file():
            raise ModelCorruptError(f"{path} (OOD detector of {manifest.ref}) is missing")
        actual = file_sha256(path)
        if actual != expected:
            raise ModelCorruptError(f"sha256 of {path} is {actual}, the manifest says {expected}")
        return path

    def staging_dir(self, name: str) -> Path:
        """A fresh, empty directory under ``.staging`` (same filesystem as the versions),
        locked by this process until it is renamed into a version or removed
        (:meth:`remove_staging`)."""
        return self._new_staging(name)

    def remove_staging(self, staging: Path) -> None:
        """Remove a directory :meth:`staging_dir` gave (what is left in it too) and drop this
        process's lock on it."""
        shutil.rmtree(staging, ignore_errors=True)
        _release(staging)

    def list(self) -> list[ModelManifest]:
        """Every readable version in the store, sorted by name then version.

        A version whose manifest is unreadable is left out with a warning in the log (load
        it by reference to see the error), so one bad directory does not hide the others.
        """
        found, unreadable = self._scan()
        for ref, exc in unreadable:
            log.warning("skipping %s in %s: %s", ref, self.root, exc)
        return [*found]

    def _scan(self) -> tuple[Sequence[ModelManifest], Sequence[tuple[str, ModelCorruptError]]]:
        """Every version's manifest, and the versions whose manifest cannot be read."""
        found: list[ModelManifest] = []
        unreadable: list[tuple[str, ModelCorruptError]] = []
        for name in self._names():
            for version in self._version_dirs(name):
                try:
                    found.append(self.read_manifest(name, version))
                except ModelCorruptError as exc:
                    unreadable.append((f"{name}:{version}", exc))
        return found, unreadable

    def resolve(self, ref: str | None) -> tuple[str, int]:
        """Turn a model reference into ``(name, version)``.

        Args:
            ref: ``"name:3"`` (that version, finished or not), ``"name"`` (its highest
                finished version), or None or ``""`` (the most recently created finished
                model in the store). Unfinished versions: see :meth:`finish`.

        Raises:
            ConfigurationError: a malformed reference (the message quotes it).
            ModelNotFoundError: no such model or version, or an empty store.
            ModelCorruptError: ``ref`` None while a version's manifest cannot be read: it
                could be the newest, so no other is taken in its place.
        """
        if ref is None or (isinstance(ref, str) and not ref.strip()):
            manifests, unreadable = self._scan()
            if unreadable:  # it may be the newest: serving the one before would be a guess
                bad, exc = unreadable[0]
                raise ModelCorruptError(
                    f"cannot tell which model in {self.root} is the newest: {bad} cannot be "
                    f"read ({exc.detail}); repair or remove it, or name the model to use "
                    "(RADLENS_MODEL=name:version)"
                )
            if not manifests:
                raise ModelNotFoundError(f"the model store {self.root} holds no models")
            finished = [m for m in manifests if self._is_finished(m.name, m.version)]
            if not finished:
                raise ModelUnfinishedError(
                    f"the model store {self.root} holds no finished model: "
                    f"{_unfinished_list([m.ref for m in manifests])} (see `radlens models list`)"
                )
            newest = max(finished, key=lambda m: (_created(m), m.name, m.version))
            return newest.name, newest.version
        if not isinstance(ref, str):
            raise TypeError(f"a model reference must be a string or None. Received: {ref!r}")
        match = _REF.match(ref.strip())
        if match is None:
            raise ConfigurationError(
                f"a model reference is 'name' or 'name:version'. Received: {ref!r}"
            )
        name = match["name"]
        if not _is_name(name):
            raise ConfigurationError(
                f"a model reference is 'name' or 'name:version' with a valid model name. "
                f"Received: {ref!r}"
            )
        versions = self._version_dirs(name)
        if not versions:
            known = ", ".join(self._names()) or "none"
            raise ModelNotFoundError(
                f"no model named {name!r} in {self.root} (models there: {known})"
            )
        if match["version"] is None:
            finished_versions = [v for v in versions if self._is_finished(name, v)]
            if not finished_versions:
                raise ModelUnfinishedError(
                    f"model {name!r} has no finished version in {self.root}: "
                    f"{_unfinished_list([f'{name}:{v}' for v in versions])} (see `radlens "
                    "models list`)"
                )
            return name, finished_versions[-1]
        text = match["version"]
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise ConfigurationError(f"a model version is an integer >= 1. Received: {ref!r}")
        version = int(text)
        if version not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version} in {self.root} "
                f"(versions: {', '.join(map(str, versions))})"
            )
        return name, version

    def load(self, ref: str | None) -> LoadedModel:
        """Load a stored model after checking it is intact and compatible.

        Checks, in order: the manifest is valid; ``model.keras`` exists and its sha256 is
        the manifest's; the manifest's preprocessing version is this radlens's
        ``PREPROCESSING_VERSION``. The model is loaded without its optimizer state
        (``compile=False``); radlens's custom layers are registered first.

        Args:
            ref: as for :meth:`resolve`.

        Raises:
            ConfigurationError: a malformed reference.
            ModelNotFoundError: no such model.
            ModelCorruptError: bad manifest, missing or altered ``model.keras``, or a file
                Keras cannot read.
            ModelIncompatibleError: the model was trained with another preprocessing version.
        """
        name, version = self.resolve(ref)
        manifest = self.verify(name, version)
        path = self.root / name / str(version)
        model_path = path / MODEL_FILE
        check_preprocessing_version(manifest)
        import keras

        importlib.import_module("radlens.models.layers")  # registers radlens's custom layers
        try:
            model = keras.saving.load_model(model_path, compile=False)
        except Exception as exc:  # Keras raises many types for a file it cannot read
            raise ModelCorruptError(
                f"Keras could not load {model_path}: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]}"
            ) from exc
        _check_model_fits_manifest(model, manifest, model_path)
        return LoadedModel(model=model, manifest=manifest, path=path)


# --- prediction helpers --------------------------------------------------------------------


def predict_scores(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """Class scores for a batch of model-ready images, in one model call.

    Args:
        model: a model from :func:`models.architectures.build_model` or the store.
        batch: float ``(N, H, W, C)`` matching the model input (C = 1: gray in [0, 1]);
            a single ``(H, W, C)`` image is not accepted, stack it first.

    Returns:
        float32 ``(N, classes)`` softmax scores.

    Raises:
        TypeError: ``batch`` is not a numpy array.
        InvalidImageError: the batch shape does not fit the model; quotes both shapes.
    """
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"batch must be a numpy array. Received: {type(batch).__name__}")
    expected = tuple(model.input_shape[1:])
    if (
        batch.ndim != 4
        or batch.shape[0] == 0
        or any(e is not None and e != s for e, s in zip(expected, batch.shape[1:], strict=True))
    ):
        raise InvalidImageError(
            f"expected a batch of shape (N, {', '.join(str(e) for e in expected)}) for this "
            f"model. Received shape {batch.shape}"
        )
    import keras

    out = model(batch.astype(np.float32, copy=False), training=False)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)


# --- helpers -------------------------------------------------------------------------------


def _is_name(text: str) -> bool:
    try:
        check_model_name(text)
    except ModelCorruptError:
        return False
    return True


def _created(manifest: ModelManifest) -> datetime:
    return datetime.fromisoformat(manifest.created_at)


def _model_input_shape(model: Any) -> list[int]:
    shape = getattr(model, "input_shape", None)
    if not isinstance(shape, tuple) or len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ConfigurationError(
            f"the model must take a batch of (H, W, C) images of fixed size. "
            f"Received input_shape={shape!r}"
        )
    return [int(d) for d in shape[1:]]


def _model_output_units(model: Any) -> int:
    shape = getattr(model, "output_shape", None)
    if not isinstance(shape, tuple) or len(shape) != 2 or shape[1] is None:
        raise ConfigurationError(
            f"the model must output (batch, classes) scores. Received output_shape={shape!r}"
        )
    return int(shape[1])


def _check_model_fits_manifest(model: Any, manifest: ModelManifest, model_path: Path) -> None:
    """Refuse a model whose input or output disagrees with its manifest (an edited manifest
    sealed again, or another model.keras whose hash was recorded): preprocessing would feed it
    images of another size, or its scores would be named by another list of classes."""
    try:
        shape = _model_input_shape(model)
        units = _model_output_units(model)
    except ConfigurationError as exc:
        raise ModelCorruptError(
            f"{model_path} is not a model radlens can serve: {exc.detail}"
        ) from None
    if shape != list(manifest.input_shape) or units != len(manifest.class_names):
        raise ModelCorruptError(
            f"{model_path} takes {shape} and outputs {units} scores, but the manifest of "
            f"{manifest.ref} says input_shape {manifest.input_shape} and "
            f"{len(manifest.class_names)} classes {manifest.class_names}; the manifest does not "
            "describe this model"
        )


def _hold(path: Path) -> None:
    """Open ``path`` (a file or a directory) and keep an exclusive ``flock`` on it in _HELD:
    other processes then see it as in use (:func:`_held_elsewhere`). On a file system without
    flock it is recorded as this process's all the same (:data:`_NO_LOCK`), and others judge
    an unfinished marker by the pid it names."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        # still this process's: finish() and the sweep must not take it for another's
        # (QA round 34: every train ended in "still being written by its training run")
        log.debug("cannot lock %s (%s): held without a lock", path, exc)
        _HELD[_key(path)] = _NO_LOCK
        return
    _HELD[_key(path)] = fd


_NO_LOCK = -1  # in _HELD: this process holds the path, on a file system without flock


def _release(path: Path) -> None:
    fd = _HELD.pop(_key(path), None)
    if fd is not None and fd != _NO_LOCK:
        os.close(fd)


def _holding(path: Path) -> bool:
    return _key(path) in _HELD


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _held_elsewhere(path: Path) -> bool:
    """Whether some process (this one included, through another descriptor) holds a flock on
    ``path``. Where locks cannot be probed, assume it does: nothing is removed on a guess."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no flock here (EBADF, ENOLCK, EOPNOTSUPP): a marker names its writer
        return path.name != UNFINISHED_FILE or _writer_alive(path)
    finally:
        os.close(fd)  # drops the probe's own lock
    return False


def _marker_pid(marker: Path) -> int | None:
    """The pid an unfinished marker names (its saver's), or None."""
    try:
        return int(json.loads(marker.read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _writer_alive(marker: Path) -> bool:
    """Whether the process a marker names still runs (on this host: where flock cannot be
    probed, the next best sign; a marker that names none is taken as live)."""
    pid = _marker_pid(marker)
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, another user's
        return True
    return True


def _unfinished_list(refs: list[str]) -> str:
    listed = ", ".join(refs[:5]) + (f" and {len(refs) - 5} more" if len(refs) > 5 else "")
    return f"{listed} {'is' if len(refs) == 1 else 'are'} unfinished"


def _marker_note(marker: Path) -> str:
    pid = _marker_pid(marker)
    return "process unknown" if pid is None else f"process {pid}"


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # make the rename itself durable; not every platform/filesystem allows it
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _written_here(version_dir: Path, pattern: str) -> set[str]:
    """Names in ``version_dir`` that this registry writes (``pattern``, e.g. a runtime's
    ``openvino-<12 hex>``): what a conversion killed between its rename and its manifest
    leaves unlisted, removed by the next one (under the lock)."""
    return {p.name for p in version_dir.iterdir() if re.fullmatch(pattern, p.name)}


@contextlib.contextmanager
def _writing(what: str, where: Path) -> Iterator[None]:
    """Turn a file-system error while writing ``what`` into a ModelStoreWriteError naming it,
    the store and the reason: a full disk's OSError names no file (Keras, ``write``), and would
    reach the user as an internal error. The caller removes what it had begun."""
    try:
        yield
    except ModelStoreWriteError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        at = f" ({exc.filename})" if exc.filename else ""
        raise ModelStoreWriteError(
            f"writing {what} to the store {where} failed: {reason}{at}"
        ) from exc


def _replace_manifest(path: Path, manifest: ModelManifest) -> None:
    """Write ``manifest`` next to ``path``, fsync, and rename it over ``path`` (atomic)."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with _writing(f"the manifest {path}", path.parents[2]):
        try:
            _write_text_synced(temp, manifest.to_json())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _write_text_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
