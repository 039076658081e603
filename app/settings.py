"""The service's one configuration class (env prefix ``RADLENS_``), checked at start-up.

Every value has an embedded default so a fresh clone runs with nothing else installed:
SQLite under ``<repo>/var/``, the model store under ``<repo>/models/store`` (or
``$RADLENS_MODEL_STORE``), the device chosen automatically. A bad value stops start-up with
a pydantic ``ValidationError`` that names the variable and quotes what was received.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATABASE_URL = f"sqlite:///{REPO_ROOT / 'var' / 'radlens.db'}"
MIB = 1024 * 1024
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_MODEL_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?$")
_OPERATING_POINT = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_SUPPORTED_BACKENDS = ("sqlite", "postgresql")
SECRET_FIELDS = frozenset(
    {"uid_pseudonym_key", "model_signing_key", "dedupe_key"}
)  # never quoted in error messages
URL_FIELDS = frozenset({"database_url"})  # quoted with the password masked


def mask_url_password(value: str) -> str:
    """``value`` with the password of its user-info replaced by ``***``, also when it is not a
    URL SQLAlchemy can parse (a rejected RADLENS_DATABASE_URL is quoted back this way)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(value).render_as_string(hide_password=True)
    except Exception:  # unparseable: mask by shape, scheme://user:password@host/...
        pass
    head, at, tail = value.rpartition("@")
    if not at:
        return value
    scheme, sep, userinfo = head.rpartition("://")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{tail}"


def _default_max_pixels() -> int:
    # models.preprocessing is light (numpy, pydicom, Pillow): no TensorFlow at settings time.
    from radlens.models.preprocessing import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS


def _default_model_store() -> Path:
    # The default of models.registry.default_store_path(), without its $RADLENS_MODEL_STORE
    # lookup: the settings source reads that variable itself (env prefix).
    return REPO_ROOT / "models" / "store"


def _ae_title(value: str) -> str:
    title = value.strip()
    if not 1 <= len(title) <= 16 or not title.isascii() or "\\" in title or not title.isprintable():
        raise ValueError(
            f"an AE title is 1 to 16 printable ASCII characters, no backslash. Received: {value!r}"
        )
    return title


def _storage_sop_classes(value: str) -> list[str]:
    """RADLENS_DIMSE_SOP_CLASSES as SOP Class UIDs: each comma-separated entry a storage SOP
    class's keyword (pynetdicom's, e.g. ``DigitalMammographyXRayImageStorageForPresentation``)
    or UID; anything else (a typo, a query/retrieve class) is refused naming it."""
    from pynetdicom import sop_class
    from pynetdicom.service_class import StorageServiceClass

    uids: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        found = getattr(sop_class, entry, None) if entry.isidentifier() else entry
        uid = str(found) if isinstance(found, str) else ""
        if not uid or sop_class.uid_to_service_class(uid) is not StorageServiceClass:
            raise ValueError(
                f"{entry[:80]!r} is not a storage SOP class: give keywords such as "
                "CTImageStorage or DigitalMammographyXRayImageStorageForPresentation, or "
                "their UIDs (1.2.840.10008.5.1.4.1.1.2), separated by commas"
            )
        if uid not in uids:
            uids.append(uid)
    if not uids:
        raise ValueError("no storage SOP class given: unset it to accept the default list")
    return uids


class Settings(BaseSettings):
    """Service configuration read from ``RADLENS_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="RADLENS_",
        extra="ignore",
        frozen=True,
        protected_namespaces=(),
        # str(ValidationError) would quote RADLENS_DATABASE_URL's password: inputs are left
        # out there, and describe_validation_error quotes them masked.
        hide_input_in_errors=True,
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db",
    )
    database_connect_timeout_s: int = Field(
        default=10,
        ge=2,
        le=600,
        description="PostgreSQL: longest wait for a new connection (libpq connect_timeout), so "
        "a database host that does not answer turns a request into a 503 instead of a hang "
        "until the kernel gives up on TCP (minutes); a connect_timeout in the URL wins",
    )
    model_store: Path = Field(default_factory=_default_model_store)
    model: str | None = Field(default=None, description="name[:version]; None = newest model")
    operating_point: str | None = Field(
        default=None,
        description="operating point of the model's manifest that decides the label "
        "(chosen, youden, sens90, sens95, sens99, ...); None = the model's own threshold",
    )
    device: Literal["auto", "cpu", "gpu"] = "auto"
    max_batch_size: int = Field(default=8, ge=1, le=1024)
    max_batch_wait_ms: float = Field(default=50.0, ge=0.0, le=10_000.0)
    batch_tuning: Literal["auto", "off"] = Field(
        default="off",
        description="auto: at warm-up, time the model at batch sizes 1, 2, 4, ... up to "
        "max_batch_size and batch at most up to the most efficient; off: max_batch_size. Off "
        "by default: on a shared CPU the warm-up timings are noisy (docs/benchmarks/serve.md)",
    )
    inference_streams: int = Field(
        default=2,
        ge=1,
        le=8,
        description="model calls that may run at once, each on its own batch; with more than "
        "one, each call preprocesses its own batch first (docs/benchmarks/serve.md)",
    )
    latency_model: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="with OpenVINO and more than one inference stream, also compile the model "
        "(same IR and precision) with OpenVINO's LATENCY hint for a lone request (nothing else "
        "queued or running), over every core. auto: run a lone request on whichever of the two "
        "is measured faster (one call over every core stalls on a busy shared CPU); on: always "
        "on the latency model; off: one compiled model (docs/benchmarks/serve.md, round 8)",
    )
    malloc_keep_mib: int = Field(
        default=64,
        ge=0,
        le=4096,
        description="glibc only: serve buffers up to 32 MiB from the heap and keep up to this "
        "much freed memory per heap, so each upload's multi-megabyte copies reuse memory "
        "instead of faulting in fresh pages (app/memory.py); 0 = glibc's defaults",
    )
    # Backpressure: beyond these the service answers 503 + Retry-After at once (app/workqueue.py)
    max_queued_predictions: int = Field(
        default=256, ge=1, le=100_000, description="uploads waiting for the model at most"
    )
    max_queued_writes: int = Field(
        default=1024, ge=1, le=100_000, description="predictions waiting to be stored at most"
    )
    max_upload_bytes: int = Field(default=64 * MIB, ge=1)
    max_inflight_upload_bytes: int = Field(
        default=256 * MIB,
        ge=0,
        description="bytes of upload bodies read or processed at once at most (each costs "
        "about twice its size while in flight); beyond, 503 + Retry-After; an upload alone "
        "is always admitted; 0 = no bound (app/limits.py)",
    )
    body_timeout_s: float = Field(
        default=60.0,
        ge=0.0,
        le=3600.0,
        description="seconds a request body may go without a new chunk before the request "
        "is answered 408 and its connection closed; 0 = no limit (app/limits.py)",
    )
    max_pixels: int = Field(default_factory=_default_max_pixels, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "info"
    access_log: bool = Field(
        default=False,
        description="uvicorn's per-request access log (`radlens serve`): off by default, since "
        "its lines carry raw paths and query strings (e.g. a listing's study UID) and cost CPU",
    )
    # Security (docs/security.md): API keys on unless explicitly disabled for development.
    auth: Literal["enabled", "disabled"] = "enabled"
    rate_limit_per_minute: int = Field(default=0, ge=0, le=1_000_000, description="0 = off")
    auth_cache_ttl_s: float = Field(
        default=5.0,
        ge=0.0,
        le=300.0,
        description="Seconds an authenticated API key stays cached in-process (a revocation "
        "takes effect within this time); 0 = no cache, every request looks the key up",
    )
    retention_days: int = Field(default=0, ge=0, le=36_500, description="0 = keep forever")
    uid_pseudonym_key: SecretStr | None = Field(
        default=None, description="HMAC key (>= 16 characters) to pseudonymise stored UIDs"
    )
    dedupe_key: SecretStr | None = Field(
        default=None,
        description="HMAC key (>= 16 characters) of the instance identity that de-duplicates "
        "re-posts whatever the pseudonymisation (app/dedupe.py); required with "
        "uid_pseudonym_key, must differ from it, and keep it: a new one is not recognised",
    )
    rate_limit_store: Literal["database", "memory"] = Field(
        default="database",
        description="Where the per-key token buckets live (app/ratelimit.py): 'database' shares "
        "them between every replica and worker on RADLENS_DATABASE_URL (one round trip per "
        "request); 'memory' keeps them in the process (no round trip; R processes give a key "
        "R times the limit)",
    )
    # Explanations and DICOM outputs (docs/pacs-integration.md)
    explain_warmup: bool = Field(
        default=False, description="Build and trace Grad-CAM at start-up (first explain is fast)"
    )
    dicom_copy_patient: bool = Field(
        default=False,
        description="Copy the patient/study identification from an uploaded source into an "
        "SR returned in the same request (never stored); off = those attributes are empty",
    )
    stow_max_instances: int = Field(default=100, ge=1, le=10_000)
    # Series and study results (app/series.py): computed from the stored predictions on read
    series_aggregation: Literal["max", "mean_top_k", "noisy_or"] = Field(
        default="max",
        description="how instance scores combine into a series score: max, mean_top_k (mean "
        "of the k highest) or noisy_or (1 - prod(1 - p): saturates on long series)",
    )
    series_top_k: int = Field(
        default=3, ge=1, le=1000, description="k of mean_top_k, and key instances listed"
    )
    max_frames: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="most frames of a multi-frame instance predicted, one by one; above it "
        "every k-th frame (k = ceil(frames / max_frames)), centred on the volume",
    )
    # DICOM Storage SCP (app/dimse.py; docs/pacs-integration.md)
    dimse_port: int | None = Field(
        default=None, ge=0, le=65535, description="listen for DICOM associations (off: unset)"
    )
    dimse_bind: str = Field(default="127.0.0.1", description="address the SCP binds")
    dimse_ae_title: str = Field(default="RADLENS", description="the SCP's AE title")
    dimse_allowed_ae_titles: str | None = Field(
        default=None, description="comma-separated calling AE titles accepted (unset: any)"
    )
    dimse_require_called_ae_title: bool = Field(
        default=False,
        description="reject associations addressed to another called AE title than "
        "RADLENS_DIMSE_AE_TITLE (off: any, as most PACS nodes)",
    )
    dimse_sop_classes: str | None = Field(
        default=None,
        description="comma-separated storage SOP classes the SCP accepts (keywords such as "
        "CTImageStorage, or UIDs) instead of its default list of radiology image classes",
    )
    non_image_instances: Literal["acknowledge", "refuse"] = Field(
        default="acknowledge",
        description="instances of storage classes that hold no image (reports, presentation "
        "states, documents, RT plans ...) that a PACS sends with a study, by C-STORE or "
        "STOW-RS: acknowledge (accepted, not predicted, nothing stored) or refuse (rejected "
        "at association; a STOW-RS failure)",
    )
    dimse_max_associations: int = Field(default=4, ge=1, le=256)
    dimse_max_pdu_size: int = Field(default=262_144, ge=4096, le=16 * MIB)
    dimse_acse_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    dimse_dimse_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    dimse_network_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    dimse_tls_cert: Path | None = Field(default=None, description="PEM certificate: DICOM TLS")
    dimse_tls_key: Path | None = Field(default=None, description="PEM private key of the cert")
    dimse_tls_ca: Path | None = Field(
        default=None, description="PEM CA bundle: peers must present a certificate it signed"
    )
    dimse_ack: Literal["committed", "queued"] = Field(
        default="committed",
        description="committed: C-STORE answers Success once the prediction is committed; "
        "queued: once the instance is durably queued (a series on one association is then "
        "micro-batched; failures found later are audit rows)",
    )
    dimse_inbox_dir: Path = Field(
        default_factory=lambda: REPO_ROOT / "var" / "dimse-inbox",
        description="spool of instances acknowledged with RADLENS_DIMSE_ACK=queued",
    )
    # DICOM send-back: Storage SCU and its outbox (app/outbox.py; docs/pacs-integration.md)
    dicom_destinations: str | None = Field(
        default=None,
        description="comma-separated AE@host:port[/sr|/sc|/sr+sc] that get each prediction's "
        "SR (default) and/or Secondary Capture by C-STORE (unset: none)",
    )
    dicom_outbox_dir: Path = Field(
        default_factory=lambda: REPO_ROOT / "var" / "outbox",
        description="spool directory of results waiting for delivery",
    )
    dicom_outbox_max_age_s: float = Field(
        default=3 * 86_400.0,
        gt=0,
        le=365 * 86_400.0,
        description="an undelivered result older than this is dropped (with an audit row)",
    )
    dicom_outbox_retry_s: float = Field(
        default=10.0, gt=0, le=86_400.0, description="first retry delay; doubles per attempt"
    )
    dicom_outbox_retry_max_s: float = Field(
        default=900.0, gt=0, le=86_400.0, description="longest delay between two attempts"
    )
    # Inference runtime (models/runtime.py; README "Runtimes")
    runtime: Literal["auto", "tensorflow", "openvino"] = Field(
        default="auto",
        description="auto: OpenVINO on the CPU when the model was converted and its recorded "
        "parity is within tolerance, else TensorFlow (the GPU keeps TensorFlow); tensorflow "
        "or openvino: that runtime or a start-up error",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="auto: bf16 when the CPU supports it and the recorded bf16 parity is "
        "within tolerance, else fp32; bf16: that or a start-up error (OpenVINO only)",
    )
    parity_max_auc_difference: float = Field(
        default=0.002, ge=0.0, le=1.0, description="largest validation AUC drift served"
    )
    parity_max_flip_fraction: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="largest fraction of validation labels that may flip at the threshold",
    )
    # Intended-use gating (app/gate.py; README "Intended use and out-of-distribution images")
    gate: Literal["refuse", "flag", "off"] = Field(
        default="refuse",
        description="DICOM metadata contradicting the model's intended use: refuse (422 "
        "outside-intended-use), flag (predict and record it) or off",
    )
    ood: Literal["refuse", "flag", "off"] = Field(
        default="flag",
        description="an image scored out of distribution by the model's detector: refuse "
        "(422 out-of-distribution), flag (predict, in_distribution false) or off (no score)",
    )
    model_signing_key: SecretStr | None = Field(
        default=None,
        description="HMAC key (>= 16 characters) that signs manifests at save and is "
        "required to verify them at load",
    )
    # /ui pages (app/ui/): how long a login lasts, and Secure cookies behind HTTPS
    ui_session_minutes: int = Field(default=480, ge=1, le=10_080)
    ui_secure_cookies: bool = Field(
        default=False, description="mark the /ui session and CSRF cookies Secure (HTTPS only)"
    )
    drift_window: int = Field(
        default=500,
        ge=30,
        le=100_000,
        description="the loaded model's last stored predictions (from every replica, read "
        "from the database) the drift check compares",
    )
    drift_cache_s: float = Field(
        default=30.0,
        ge=0.0,
        le=3600.0,
        description="seconds a drift summary (the radlens_drift_* gauges, GET /v1/drift) is "
        "reused before the database is read again; 0: read at every scrape",
    )

    @field_validator("uid_pseudonym_key", "model_signing_key", "dedupe_key")
    @classmethod
    def _check_pseudonym_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < 16:
            raise ValueError(
                "must be at least 16 characters (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`). Received a value of "
                f"{len(value.get_secret_value())} characters"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError):  # ValueError: e.g. a port that is no number
            raise ValueError(
                "must be a SQLAlchemy URL such as sqlite:///var/radlens.db or "
                "postgresql+psycopg://postgres@127.0.0.1:5432/radlens. "
                f"Received: {mask_url_password(value)!r}"
            ) from None
        if url.get_backend_name() not in _SUPPORTED_BACKENDS:
            raise ValueError(
                f"must use one of {', '.join(_SUPPORTED_BACKENDS)}. "
                f"Received backend {url.get_backend_name()!r}"
            )
        return value

    @field_validator("model")
    @classmethod
    def _check_model_ref(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not _MODEL_REF.match(value):
            raise ValueError(
                f"must be 'name' or 'name:version' (e.g. 'chest:3'). Received: {value!r}"
            )
        return value

    @field_validator("operating_point")
    @classmethod
    def _check_operating_point(cls, value: str | None) -> str | None:
        # which names exist is the model's to say (checked at start-up); here only the form
        if value is None or value.strip() == "":
            return None
        if not _OPERATING_POINT.match(value.strip()):
            raise ValueError(
                "must be an operating point name of letters, digits and '_' such as "
                f"'sens95', 'youden' or 'chosen'. Received: {value!r}"
            )
        return value.strip()

    @field_validator("dimse_ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return _ae_title(value)

    @field_validator("dimse_allowed_ae_titles")
    @classmethod
    def _check_allowed_ae_titles(cls, value: str | None) -> str | None:
        if value is not None:
            for title in value.split(","):
                _ae_title(title)
        return value

    @field_validator("dicom_destinations")
    @classmethod
    def _check_dicom_destinations(cls, value: str | None) -> str | None:
        from radlens.app.destinations import parse_destinations

        parse_destinations(value)
        return value if value and value.strip() else None

    @property
    def dicom_destination_list(self) -> list[Any]:
        """The parsed RADLENS_DICOM_DESTINATIONS (app/destinations.Destination)."""
        from radlens.app.destinations import parse_destinations

        return parse_destinations(self.dicom_destinations)

    @field_validator("dimse_sop_classes")
    @classmethod
    def _check_dimse_sop_classes(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        _storage_sop_classes(value)
        return value

    @property
    def dimse_sop_class_uids(self) -> list[str]:
        """The storage SOP Class UIDs the SCP accepts: RADLENS_DIMSE_SOP_CLASSES, else
        app/dimse.DEFAULT_STORAGE_SOP_CLASSES."""
        if self.dimse_sop_classes is None:
            from radlens.app.dimse import DEFAULT_STORAGE_SOP_CLASSES

            return _storage_sop_classes(",".join(DEFAULT_STORAGE_SOP_CLASSES))
        return _storage_sop_classes(self.dimse_sop_classes)

    @property
    def dimse_allowed_ae_title_list(self) -> list[str]:
        if not self.dimse_allowed_ae_titles:
            return []
        return [t.strip() for t in self.dimse_allowed_ae_titles.split(",")]

    @field_validator("host", "dimse_bind")
    @classmethod
    def _check_bind_address(cls, value: str) -> str:
        # uvicorn and pynetdicom read an empty address as every interface: an unset shell
        # variable (RADLENS_HOST=${HOST}) must not widen a loopback service to the network
        if not value.strip():
            raise ValueError(
                "is empty, which would listen on every interface: set 127.0.0.1 (this machine "
                "only) or 0.0.0.0 (every interface) explicitly, or unset it for 127.0.0.1"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}. Received: {value!r}")
        return level

    @model_validator(mode="after")
    def _check_runtime(self) -> Settings:
        if self.runtime == "tensorflow" and self.precision == "bf16":
            raise ValueError(
                "RADLENS_PRECISION=bf16 is served by OpenVINO: set RADLENS_RUNTIME=openvino or "
                "auto. Received: runtime='tensorflow', precision='bf16'"
            )
        return self

    @field_validator("model_store", "dimse_inbox_dir", "dicom_outbox_dir", mode="before")
    @classmethod
    def _check_folder_given(cls, value: Any) -> Any:
        # Path("") is the current directory: an unset shell variable would put the store or
        # a spool of results wherever the service happened to be started
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: set it to a folder, or unset it for the default")
        return value

    @field_validator("model_store")
    @classmethod
    def _check_model_store(cls, value: Path) -> Path:
        # a store that does not exist yet is fine here (`radlens train` creates it); serving
        # from one is refused at start-up (app/startup.check_model)
        if value.exists() and not value.is_dir():
            raise ValueError(
                "must be a directory, the model store `radlens train` writes models to, not "
                "a file: set it to that directory, or unset it for models/store"
            )
        return value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_url_password(value) if name in URL_FIELDS else value

    @model_validator(mode="after")
    def _check_dimse_tls(self) -> Settings:
        if (self.dimse_tls_cert is None) != (self.dimse_tls_key is None):
            raise ValueError(
                "set both RADLENS_DIMSE_TLS_CERT and RADLENS_DIMSE_TLS_KEY, or neither"
            )
        if self.dimse_tls_ca is not None and self.dimse_tls_cert is None:
            raise ValueError("RADLENS_DIMSE_TLS_CA needs RADLENS_DIMSE_TLS_CERT and _KEY")
        for path in (self.dimse_tls_cert, self.dimse_tls_key, self.dimse_tls_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"DICOM TLS file not found. Received: {str(path)!r}")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def model_signing_key_bytes(self) -> bytes | None:
        key = self.model_signing_key
        return key.get_secret_value().encode() if key is not None else None

    @property
    def uid_pseudonym_key_bytes(self) -> bytes | None:
        key = self.uid_pseudonym_key
        return key.get_secret_value().encode() if key is not None else None

    @model_validator(mode="after")
    def _check_dedupe_key(self) -> Settings:
        # Pseudonyms are recomputable only with their key; an identity under no key (or the
        # pseudonym key, which would change with it) would undo that or break dedupe on rotation.
        if self.uid_pseudonym_key is None:
            return self
        if self.dedupe_key is None:
            raise ValueError(
                "RADLENS_UID_PSEUDONYM_KEY needs RADLENS_DEDUPE_KEY (>= 16 characters, another "
                "secret that you keep when pseudonymisation is switched or its key changes): "
                "it recognises a re-posted instance without storing its UID (docs/security.md). "
                "Received: RADLENS_DEDUPE_KEY unset"
            )
        if self.dedupe_key.get_secret_value() == self.uid_pseudonym_key.get_secret_value():
            raise ValueError(
                "RADLENS_DEDUPE_KEY must differ from RADLENS_UID_PSEUDONYM_KEY (it has to outlive "
                "a change of the pseudonym key). Received: the same value for both"
            )
        return self

    @property
    def dedupe_key_bytes(self) -> bytes | None:
        key = self.dedupe_key
        return key.get_secret_value().encode() if key is not None else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def describe_validation_error(exc: Exception) -> str:
    """One line naming each bad ``RADLENS_*`` variable and why, for start-up failures."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "settings"
        name = f"RADLENS_{field.upper()}" if error["loc"] else "settings"
        received = repr(error.get("input"))
        if not error["loc"]:
            # a check across fields: its input is every value given, secrets and the database
            # URL's password included; its message quotes what it needs itself
            parts.append(f"{name}: {error['msg']}")
            continue
        if field in SECRET_FIELDS:
            received = "<secret withheld>"
        elif field in URL_FIELDS and isinstance(error.get("input"), str):
            received = repr(mask_url_password(error["input"]))
        parts.append(f"{name}: {error['msg']} (received {received})")
    return "invalid configuration: " + "; ".join(parts)
