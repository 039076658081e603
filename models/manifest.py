"""The model manifest: what a stored model is, how it was made, and how to use it.

Every version in the model store is a directory ``<name>/<version>/`` holding ``model.keras``
and ``manifest.json``; this module is the manifest's schema. It imports no TensorFlow, so
listing the store stays fast.

``ModelManifest.from_dict`` is the one place a manifest read from disk is checked: a missing
field, a wrong type or an impossible value raises :class:`~models.errors.ModelCorruptError`
naming the field and quoting the value received. Unknown keys are ignored, so a newer radlens
may add fields without breaking an older reader.

**The seal** (tamper evidence, :func:`seal` / :func:`check_seal`): ``integrity`` holds a
sha256 per top-level field of the manifest (each over its canonical JSON: sorted keys, no
spaces), a digest over that table, and, when a signing key is configured
(``RADLENS_MODEL_SIGNING_KEY``), an HMAC-SHA256 of the digest. The ``model_sha256`` and the
converted runtimes' file hashes are fields, so the seal covers the files too. A check
recomputes the table from the manifest as read and names every field that was changed, added
or removed. Without a key the seal catches edits made by hand or by tools that do not know it;
with a key only its holders can re-seal. A manifest without a seal (saved before it existed)
is refused with :class:`~models.errors.ModelUnsealedError` until someone checks it and runs
``radlens models seal`` (a deliberate step, logged).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import platform
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from radlens.models.errors import (
    ModelCorruptError,
    ModelTamperedError,
    ModelUnsealedError,
    ModelUnsignedError,
    RadlensError,
)

__all__ = [
    "INTEGRITY_FIELD",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "NAME_PATTERN",
    "SEAL_SCHEME",
    "ModelManifest",
    "canonical_json",
    "check_model_name",
    "check_seal",
    "framework_versions",
    "jsonable",
    "seal",
    "utc_now_iso",
]

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.keras"

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A safe model name: starts with a letter or digit, then letters, digits, ``_ . -``
(at most 64 characters). No ``/``, ``:`` or leading dot, so it is always one path segment."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

INTEGRITY_FIELD = "integrity"
_WRITTEN_WHEN_SET = ("data_split", "leakage_check", "calibration", "findings")
SEAL_SCHEME = "radlens-manifest-seal-v1"


def check_model_name(name: object, error: type[RadlensError] = ModelCorruptError) -> str:
    """Return ``name`` if it is a safe model name, else raise ``error`` quoting it.

    Args:
        name: the candidate name.
        error: the error class to raise (``ConfigurationError`` when a user chose the name).

    Raises:
        error: ``name`` is not a string matching :data:`NAME_PATTERN`.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise error(
            "a model name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or "
            f"digit. Received: name={name!r}"
        )
    return name


def utc_now_iso() -> str:
    """Now as ISO 8601 UTC with microseconds, e.g. ``2026-01-02T03:04:05.000006+00:00``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def framework_versions() -> dict[str, str]:
    """Versions of the libraries a saved model depends on, read without importing them.

    Returns:
        ``{"tensorflow", "keras", "numpy", "python", "radlens"}`` -> version string
        (``"not installed"`` for a missing distribution).
    """
    versions = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "numpy", "radlens"):
        versions[dist] = _installed_version(dist, *_SAME_PACKAGE.get(dist, ()))
    return versions


# Distributions that install the same importable package under another name: the container
# image's TensorFlow is the CPU-only wheel (scripts/image_requirements.py).
_SAME_PACKAGE = {"tensorflow": ("tensorflow-cpu",)}


def _installed_version(*dists: str) -> str:
    """The version of the first of ``dists`` that is installed, else ``"not installed"``."""
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def jsonable(value: Any) -> Any:
    """A deep copy of ``value`` made of JSON types only.

    numpy scalars and arrays (metrics computed with numpy or scikit-learn) become Python
    numbers and lists, tuples become lists, and NaN or infinite floats (e.g. an AUC that is
    undefined on a one-class split) become ``None``, since strict JSON cannot hold them.

    Raises:
        TypeError: a value that has no JSON form, or a non-string mapping key (the message
            quotes it).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings. Received key {key!r}")
            out[key] = jsonable(item)
        return out
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    tolist = getattr(value, "tolist", None)  # numpy scalar or array
    if callable(tolist) and hasattr(value, "dtype"):
        return jsonable(tolist())
    raise TypeError(f"{type(value).__name__} has no JSON form. Received: {value!r}")


@dataclass
class ModelManifest:
    """Everything known about one stored model version (``manifest.json``).

    Attributes:
        name: the model's name in the store (see :data:`NAME_PATTERN`).
        version: integer version, >= 1.
        created_at: ISO 8601 UTC time the version was saved.
        architecture: ``"resnet50"``, ``"simple_cnn"`` or another builder's name.
        input_shape: ``[H, W, C]`` the model takes (``C`` is 1: gray in [0, 1]).
        class_names: one name per output unit (at least 2); for a binary model index 1 is
            the positive class.
        threshold: the positive-class score threshold (binary models), or None (0.5 for
            binary, argmax for multi-class).
        preprocessing_version: ``models.preprocessing.PREPROCESSING_VERSION`` at training.
        window: the window preset used in preprocessing, or None (file's VOI / min-max).
        filters: the fixed filter front-end (names from ``models.ops.FILTER_NAMES``).
        metrics: ``{"val": {...}, "test": {...}}`` measured on those splits.
        training_config: the training run's configuration.
        data_fingerprint: a hash identifying the training data, or None.
        framework_versions: tensorflow, keras, numpy, python and radlens versions.
        model_sha256: sha256 hex digest of ``model.keras``, checked at load.
        validated_for_clinical_use: True only after a clinical validation; never set by
            training.
        description: free text.
        runtimes: converted runtimes kept beside ``model.keras``, e.g. ``{"openvino":
            {"files": {relative path: sha256}, "parity": {...}, ...}}`` (models.runtime).
        data_split: how the training data was split (method, where patients came from, how
            their ids were hashed, sizes and patient counts per split, whether there is a
            test split; counts only, no identifier), or None (not recorded: a manifest
            written before this field, whose run kept it under ``metrics["split"]``).
        leakage_check: the patient-leakage check's result (``{"passed": true,
            "patients_in_two_splits": 0}``; a leaking split never reaches the store), or None.
        calibration: the score calibration (method, temperature, the split it was fitted
            on and the one it was evaluated on, ECE before and after), or None (not
            calibrated, or recorded under ``metrics["calibration"]`` by an older radlens).
            These three are written only when set, so an older manifest's fields (and its
            seal) stay exactly as they were.
        intended_use: what the model is for and what training saw
            (``models.intended_use.intended_use_record``: stated values, observed counts,
            what the metadata gate accepts), or None: "not stated" (saved before it existed).
        ood: the out-of-distribution detector stored beside ``model.keras``
            (``models.ood``: method, threshold, ``files`` {relative path: sha256}), or None.
        integrity: the seal over every other field (see the module docstring), or None in
            a manifest not sealed yet.
        findings: multi-label models only (absent from single-label manifests):
            ``{"label_mode": "multi-label", "scores": "independent", "none_name": str,
            "thresholds": {finding: threshold}, ...}`` -- ``class_names`` are then the
            findings, each output an independent sigmoid score, each with its own threshold
            (``threshold`` is null).
        served_thresholds: the loaded model only, in memory: each finding's threshold at the
            operating point a site serves it at (``RADLENS_OPERATING_POINT``;
            ``models.decision.serve_at``), or None (the trained ``findings.thresholds``).
            A deployment setting, not a property of the model: never written to
            ``manifest.json``, never sealed, not compared.
    """

    name: str
    version: int
    created_at: str
    architecture: str
    input_shape: list[int]
    class_names: list[str]
    threshold: float | None
    preprocessing_version: str
    window: str | None
    filters: list[str]
    metrics: dict[str, dict[str, Any]]
    training_config: dict[str, Any]
    data_fingerprint: str | None
    framework_versions: dict[str, str]
    model_sha256: str
    validated_for_clinical_use: bool = False
    description: str = ""
    runtimes: dict[str, Any] = field(default_factory=dict)
    data_split: dict[str, Any] | None = None
    leakage_check: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    intended_use: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None
    integrity: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    findings: dict[str, Any] | None = None
    served_thresholds: dict[str, float] | None = field(default=None, repr=False, compare=False)

    @property
    def ref(self) -> str:
        """``"name:version"``, the reference ``ModelRegistry.resolve`` accepts."""
        return f"{self.name}:{self.version}"

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` to pass as ``size=`` to ``models.preprocessing.preprocess``."""
        return int(self.input_shape[0]), int(self.input_shape[1])

    @property
    def is_binary(self) -> bool:
        """True for a two-class model (the threshold applies to class index 1)."""
        return len(self.class_names) == 2 and not self.multi_label

    @property
    def multi_label(self) -> bool:
        """True for a multi-label findings model (independent sigmoid scores)."""
        return self.findings is not None

    @property
    def finding_thresholds(self) -> dict[str, float]:
        """Each finding's threshold (multi-label models; empty otherwise)."""
        if self.findings is None:
            return {}
        return {k: float(v) for k, v in self.findings["thresholds"].items()}

    @property
    def decision_thresholds(self) -> dict[str, float]:
        """Each finding's threshold as served: the site's operating point's
        (``served_thresholds``) when one is set, else :attr:`finding_thresholds`. Decisions
        (``models.decision.decide_findings``) use these; what the model was trained with (the
        drift reference's rates, a series threshold's pairing) stays
        :attr:`finding_thresholds`."""
        if self.served_thresholds is not None and self.findings is not None:
            return {**self.finding_thresholds, **self.served_thresholds}
        return self.finding_thresholds

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON types, in field order (what ``manifest.json`` holds).

        Unknown keys read by :meth:`from_dict` are written back unchanged.
        """
        data = asdict(self)
        del data["served_thresholds"]  # a deployment's, in memory only
        for optional in _WRITTEN_WHEN_SET:
            if data[optional] is None:
                del data[optional]
        extra = data.pop("extra")
        data.update({k: v for k, v in extra.items() if k not in data})
        result: dict[str, Any] = jsonable(data)
        return result

    def to_json(self) -> str:
        """``to_dict()`` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(
        cls, data: Any, *, error: type[RadlensError] = ModelCorruptError
    ) -> ModelManifest:
        """Validate a decoded ``manifest.json`` and build the manifest.

        Args:
            data: the decoded JSON object.
            error: the error class for a bad value (``ModelCorruptError`` for files read
                from the store; the registry passes ``ConfigurationError`` when checking
                what a caller asked it to save).

        Returns:
            The manifest; keys it does not know are kept in ``extra``.

        Raises:
            error: ``data`` is not an object, a required field is missing, or a field has
                the wrong type or an impossible value; the message names the field and
                quotes the value.
        """
        if not isinstance(data, dict):
            raise error(f"manifest must be a JSON object. Received: {type(data).__name__}")
        check = _Checker(data, error)
        name = check_model_name(check.get("name"), error)
        version = check.integer("version", minimum=1)
        created_at = check.string("created_at")
        try:
            stamp = datetime.fromisoformat(created_at)
        except ValueError:
            raise error(
                f"manifest field 'created_at' must be an ISO 8601 time. Received: {created_at!r}"
            ) from None
        if stamp.tzinfo is None:
            raise error(
                "manifest field 'created_at' must carry a time zone (UTC). "
                f"Received: {created_at!r}"
            )
        input_shape = check.list_of("input_shape", int)
        if len(input_shape) != 3 or any(isinstance(v, bool) or v < 1 for v in input_shape):
            raise error(
                f"manifest field 'input_shape' must be [H, W, C] of positive integers. "
                f"Received: {input_shape!r}"
            )
        class_names = check.list_of("class_names", str)
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise error(
                "manifest field 'class_names' must hold at least 2 distinct names. "
                f"Received: {class_names!r}"
            )
        threshold = check.get("threshold")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, int | float):
                raise error(
                    f"manifest field 'threshold' must be a number or null. Received: {threshold!r}"
                )
            if not 0.0 <= threshold <= 1.0:
                raise error(
                    f"manifest field 'threshold' must be within [0, 1]. Received: {threshold!r}"
                )
            threshold = float(threshold)
        sha = check.string("model_sha256")
        if not _SHA256.match(sha):
            raise error(
                f"manifest field 'model_sha256' must be 64 lowercase hex digits. Received: {sha!r}"
            )
        metrics = check.mapping("metrics")
        for split, values in metrics.items():
            if not isinstance(values, dict):
                raise error(
                    f"manifest field 'metrics' must map split names to objects. "
                    f"Received: metrics[{split!r}]={values!r}"
                )
        versions = check.mapping("framework_versions")
        if not all(isinstance(v, str) for v in versions.values()):
            raise error(
                f"manifest field 'framework_versions' must map names to strings. "
                f"Received: {versions!r}"
            )
        validated = check.get("validated_for_clinical_use", False)
        if not isinstance(validated, bool):
            raise error(
                "manifest field 'validated_for_clinical_use' must be true or false. "
                f"Received: {validated!r}"
            )
        runtimes = check.get("runtimes", {})
        if not isinstance(runtimes, dict) or not all(
            isinstance(v, dict)
            and isinstance(v.get("files"), dict)
            and all(isinstance(p, str) and _SHA256.match(str(h)) for p, h in v["files"].items())
            for v in runtimes.values()
        ):
            raise error(
                "manifest field 'runtimes' must map runtime names to objects with 'files' "
                f"(relative path -> sha256). Received: {runtimes!r}"
            )
        records = {}
        for optional in _WRITTEN_WHEN_SET:
            value = check.get(optional, None)
            if value is not None and not isinstance(value, dict):
                raise error(
                    f"manifest field {optional!r} must be an object or absent. "
                    f"Received: {value!r:.200}"
                )
            records[optional] = value
        intended_use = check.get("intended_use", None)
        if intended_use is not None and not isinstance(intended_use, dict):
            raise error(
                "manifest field 'intended_use' must be an object or null. "
                f"Received: {intended_use!r}"
            )
        ood = check.get("ood", None)
        if ood is not None and not (
            isinstance(ood, dict)
            and isinstance(ood.get("files"), dict)
            and all(isinstance(p, str) and _SHA256.match(str(h)) for p, h in ood["files"].items())
        ):
            raise error(
                "manifest field 'ood' must be null or an object with 'files' "
                f"(relative path -> sha256). Received: {ood!r:.200}"
            )
        integrity = check.get(INTEGRITY_FIELD, None)
        if integrity is not None and not isinstance(integrity, dict):
            raise error(
                f"manifest field 'integrity' must be an object or absent. Received: {integrity!r}"
            )
        findings = _check_findings(check.get("findings", None), class_names, threshold, error)
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "served_thresholds")}
        return cls(
            findings=findings,
            name=name,
            version=version,
            created_at=created_at,
            architecture=check.string("architecture"),
            input_shape=input_shape,
            class_names=class_names,
            threshold=threshold,
            preprocessing_version=check.string("preprocessing_version"),
            window=check.optional_string("window"),
            filters=check.list_of("filters", str),
            metrics=metrics,
            training_config=check.mapping("training_config"),
            data_fingerprint=check.optional_string("data_fingerprint"),
            framework_versions=versions,
            model_sha256=sha,
            validated_for_clinical_use=validated,
            description=check.optional_string("description") or "",
            runtimes=runtimes,
            data_split=records["data_split"],
            leakage_check=records["leakage_check"],
            calibration=records["calibration"],
            intended_use=intended_use,
            ood=ood,
            integrity=integrity,
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelManifest:
        """Parse ``manifest.json`` text; bad JSON or content raises ``ModelCorruptError``."""
        try:
            # NaN and Infinity are not JSON (radlens never writes them: ``jsonable``), and
            # the seal's canonical form refuses them; Python's parser would accept them
            data = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelCorruptError(f"manifest is not valid JSON ({exc})") from None
        return cls.from_dict(data)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


LABEL_MODES = ("multi-label",)


def _check_findings(
    value: Any, class_names: list[str], threshold: float | None, error: type[RadlensError]
) -> dict[str, Any] | None:
    """Validate the ``findings`` field: thresholds in [0, 1] for exactly the class names."""
    if value is None:
        return None

    def fail(what: str) -> RadlensError:
        return error(f"manifest field 'findings' {what}. Received: {value!r:.300}")

    if not isinstance(value, dict) or value.get("label_mode") not in LABEL_MODES:
        raise fail("must be an object with label_mode 'multi-label'")
    thresholds = value.get("thresholds")
    if not isinstance(thresholds, dict) or list(thresholds) != class_names:
        raise fail(f"must hold 'thresholds' for exactly the class names {class_names!r}, in order")
    for name, cut in thresholds.items():
        if isinstance(cut, bool) or not isinstance(cut, int | float) or not 0.0 <= cut <= 1.0:
            raise fail(f"threshold of {name!r} must be a number in [0, 1]")
    if not isinstance(value.get("none_name"), str) or not value["none_name"]:
        raise fail("must name the no-finding label ('none_name')")
    if value["none_name"] in class_names:
        raise fail("'none_name' must not be one of the findings")
    if threshold is not None:
        raise error(
            "a multi-label manifest has per-finding thresholds and a null 'threshold'. "
            f"Received: threshold={threshold!r}"
        )
    return dict(value)


def canonical_json(value: Any) -> bytes:
    """The one byte form a value is hashed in: JSON, sorted keys, no spaces, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _field_digests(data: dict[str, Any]) -> dict[str, str]:
    return {
        key: hashlib.sha256(canonical_json(value)).hexdigest()
        for key, value in data.items()
        if key != INTEGRITY_FIELD
    }


def seal(data: dict[str, Any], key: bytes | None = None) -> dict[str, Any]:
    """The ``integrity`` object for a manifest's JSON fields (any ``integrity`` is ignored).

    Args:
        data: the manifest as plain JSON types (``ModelManifest.to_dict()``).
        key: an HMAC key (``RADLENS_MODEL_SIGNING_KEY``), or None for an unsigned seal.

    Returns:
        ``{"scheme", "fields": {field: sha256}, "digest", "hmac"?}``.
    """
    fields = _field_digests(json.loads(canonical_json(data)))
    digest = hashlib.sha256(canonical_json(fields)).hexdigest()
    sealed: dict[str, Any] = {"scheme": SEAL_SCHEME, "fields": fields, "digest": digest}
    if key:
        sealed["hmac"] = hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()
    return sealed


def check_seal(data: dict[str, Any], key: bytes | None = None, *, where: str = "manifest") -> None:
    """Check a decoded manifest against its ``integrity`` seal.

    Args:
        data: the manifest exactly as decoded from ``manifest.json``.
        key: the HMAC key; when given, the seal must carry a matching ``hmac``. Without
            one, a signed seal is checked for its digests only.
        where: names the manifest in messages (e.g. its path).

    Raises:
        ModelUnsealedError: the manifest has no seal.
        ModelTamperedError: a field was changed, added or removed since sealing (each one
            named), the seal itself was edited, or the signature is missing or wrong.
    """
    integrity = data.get(INTEGRITY_FIELD)
    if integrity is None:
        raise ModelUnsealedError(f"{where} has no {INTEGRITY_FIELD!r} field")
    fields = integrity.get("fields") if isinstance(integrity, dict) else None
    if (
        not isinstance(integrity, dict)
        or integrity.get("scheme") != SEAL_SCHEME
        or not isinstance(fields, dict)
    ):
        raise ModelTamperedError(
            f"{where}: the seal is not a {SEAL_SCHEME} seal. Received: {integrity!r:.200}"
        )
    actual = _field_digests(data)
    changed = sorted(k for k in actual.keys() & fields.keys() if actual[k] != fields[k])
    added = sorted(actual.keys() - fields.keys())
    removed = sorted(fields.keys() - actual.keys())
    if changed or added or removed:
        parts = [f"field {k!r} changed" for k in changed]
        parts += [f"field {k!r} added" for k in added]
        parts += [f"field {k!r} removed" for k in removed]
        raise ModelTamperedError(f"{where}: {'; '.join(parts)} since the manifest was sealed")
    digest = hashlib.sha256(canonical_json(fields)).hexdigest()
    if integrity.get("digest") != digest:
        raise ModelTamperedError(f"{where}: the seal's digest does not match its field table")
    if key:
        mac = integrity.get("hmac")
        expected = hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()
        if not isinstance(mac, str):
            raise ModelUnsignedError(
                f"{where} is not signed, but RADLENS_MODEL_SIGNING_KEY is set (seal it with "
                "the key: `radlens models seal NAME:VERSION`)"
            )
        if not hmac.compare_digest(mac, expected):
            raise ModelTamperedError(
                f"{where}: the seal's signature does not verify with RADLENS_MODEL_SIGNING_KEY"
            )


class _Checker:
    """Typed field access on a decoded manifest; every failure names the field."""

    _MISSING = object()

    def __init__(self, data: dict[str, Any], error: type[RadlensError]) -> None:
        self.data = data
        self.error = error

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.data:
            return self.data[key]
        if default is self._MISSING:
            raise self.error(f"manifest has no {key!r} field. Received keys: {sorted(self.data)}")
        return default

    def _fail(self, key: str, expected: str, value: Any) -> RadlensError:
        return self.error(f"manifest field {key!r} must be {expected}. Received: {value!r}")

    def string(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a non-empty string", value)
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.get(key, None)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string or null", value)
        return value

    def integer(self, key: str, *, minimum: int) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._fail(key, f"an integer >= {minimum}", value)
        return value

    def list_of(self, key: str, kind: type) -> list[Any]:
        value = self.get(key)
        if not isinstance(value, list) or not all(
            isinstance(v, kind) and not (kind is int and isinstance(v, bool)) for v in value
        ):
            raise self._fail(key, f"a list of {kind.__name__}", value)
        return list(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.get(key)
        if not isinstance(value, dict):
            raise self._fail(key, "an object", value)
        return dict(value)
