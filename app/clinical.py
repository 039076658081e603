"""Whether a result may go out without the not-for-clinical-use notice.

The model that *produced* a result decides, not the model serving when the result is read: a
prediction stored by an unvalidated model keeps its notice after a validated model is
deployed, and one stored by a validated model does not gain it when another model serves.
A model counts as validated only when its manifest in the model store says
``validated_for_clinical_use`` and is sealed as it is (``ModelRegistry.check_seal``); the
serving model is read there like any other, so every output of a result agrees. A model the
store no longer holds, or whose manifest is unsealed, altered or unreadable, counts as not
validated: its results keep the notice. A manifest is read again when its file changes (an
operator re-sealing it after a clinical validation).

Every output reads it here: the JSON responses (``notice``), the /ui pages, the DICOM SR and
Secondary Capture however they leave (direct download, WADO-RS, the send-back outbox), and
the STOW-RS answers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radlens.models.errors import ModelStoreError
from radlens.models.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)

Validator = Callable[[str, int], bool]
"""``validator(model_name, model_version)``: whether that model is validated."""

# (store, signing key, name, version) -> (the manifest file's stat signature, validated):
# a manifest is read again only when its file changed (re-sealed after a validation)
_cache: dict[tuple[str, bytes | None, str, int], tuple[tuple[int, int, int], bool]] = {}
_lock = threading.Lock()


def validated(settings: Any, name: str, version: int) -> bool:
    """Whether model ``name:version``'s sealed manifest in ``settings.model_store`` says it
    is validated for clinical use."""
    root = getattr(settings, "model_store", None)
    if root is None:  # no model store known: nothing is validated
        return False
    store = Path(root)
    key = getattr(settings, "model_signing_key_bytes", None)
    path = store / str(name) / str(version) / MANIFEST_FILE
    try:
        stat = os.stat(path)
    except (OSError, ValueError):  # no such model (any more), or a name that is no path
        return False
    signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    cache_key = (str(store), key, str(name), int(version))
    with _lock:
        cached = _cache.get(cache_key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    answer = _read(store, key, name, version)
    with _lock:
        _cache[cache_key] = (signature, answer)
    return answer


def _read(store: Path, key: bytes | None, name: str, version: int) -> bool:
    from radlens.models.registry import ModelRegistry

    try:
        manifest = ModelRegistry(store, signing_key=key).check_seal(name, version)
    except (ModelStoreError, OSError) as exc:
        log.warning("model %s:%s counts as not validated for clinical use: %s", name, version, exc)
        return False
    return bool(manifest.validated_for_clinical_use)


def validator(settings: Any) -> Validator:
    """:func:`validated` bound to ``settings``, remembering each model's answer for the
    validator's life (one request, one page)."""
    known: dict[tuple[str, int], bool] = {}

    def check(name: str, version: int) -> bool:
        ref = (name, version)
        if ref not in known:
            known[ref] = validated(settings, name, version)
        return known[ref]

    return check
