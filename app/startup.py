"""Checks run before the server starts, so `radlens serve` fails in one line, not a traceback.

``preflight`` checks what the lifespan will need, cheaply and in the same order: the settings
(already validated), the database (reachable, at head; SQLite upgraded), and the model (it
resolves, its manifest is valid, its sha256 matches, its preprocessing version is ours). Only
Keras deserialisation and warm-up are left to the lifespan, which does them once.

Before those, ``check_listeners`` and ``check_spools`` find in milliseconds what would
otherwise stop the service only after the model has loaded (seconds to tens of seconds): an
HTTP or DICOM address that does not resolve or is not this machine's, a port already in use
(or the two listeners on one port), a spool directory that cannot be created or written. Each
failure is a ``ConfigurationError`` naming the variable (or the ``radlens serve`` flag that set
it), the value and what to do. The ports are test-bound and released at once: uvicorn binds
the HTTP port only after the lifespan has loaded the model, so a port another process takes in
between is still reported by uvicorn (and then re-checked by ``radlens serve``).

``choose_runtime`` applies RADLENS_RUNTIME / RADLENS_PRECISION (models.runtime.select_runtime)
to the model's converted files and recorded parity and to this CPU; preflight runs it too, so
an explicit runtime that cannot serve (package absent, converted file missing or altered,
bf16 unsupported or out of tolerance) stops `radlens serve` in one line.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radlens.app.settings import Settings
from radlens.models.errors import ConfigurationError, ModelCorruptError, ModelNotFoundError
from radlens.models.manifest import ModelManifest

if TYPE_CHECKING:
    import ssl

    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import Selection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreflightReport:
    schema_revision: str
    model: ModelManifest
    runtime: Selection | None = None


def registry_for(settings: Any) -> ModelRegistry:
    """The model store, with the manifest signing key from the settings (else the env)."""
    from radlens.models.registry import ModelRegistry

    return ModelRegistry(
        settings.model_store, signing_key=getattr(settings, "model_signing_key_bytes", None)
    )


def choose_runtime(
    settings: Any, registry: ModelRegistry, manifest: ModelManifest, device_kind: str
) -> Selection:
    """Which runtime and precision serve ``manifest`` here (see models.runtime.select_runtime).

    A fallback of ``auto`` to TensorFlow fp32 is logged as a warning with its reason.

    Raises:
        RuntimeUnavailableError: an explicit setting that cannot be honoured (the reason).
        ConfigurationError: RADLENS_RUNTIME=tensorflow with RADLENS_PRECISION=bf16.
    """
    from radlens.models.runtime import (
        OPENVINO,
        Tolerance,
        bf16_supported,
        openvino_version,
        recorded_parity,
        select_runtime,
    )

    problem: str | None = None
    if openvino_version() is None:
        problem = "the openvino package is not installed (pip install openvino)"
    else:
        try:
            registry.runtime_files(manifest, OPENVINO)
        except (ModelNotFoundError, ModelCorruptError) as exc:
            problem = exc.detail
    selection = select_runtime(
        runtime=getattr(settings, "runtime", "auto"),
        precision=getattr(settings, "precision", "auto"),
        device_kind=device_kind,
        openvino_problem=problem,
        bf16=problem is None and device_kind == "cpu" and bf16_supported(),
        parity={p: recorded_parity(manifest, p) for p in ("fp32", "bf16")},
        tolerance=Tolerance(
            max_auc_difference=getattr(settings, "parity_max_auc_difference", 0.002),
            max_flip_fraction=getattr(settings, "parity_max_flip_fraction", 0.01),
        ),
    )
    if selection.fallback:
        log.warning("serving with TensorFlow fp32: %s", selection.reason)
    return selection


def check_model(settings: Settings) -> ModelManifest:
    """Resolve RADLENS_MODEL in the store and verify the artifact without loading Keras: the
    registry's own checks (``ModelRegistry.verify``, ``check_preprocessing_version``), which
    ``ModelRegistry.load`` runs again in the lifespan, that the model has the operating
    point RADLENS_OPERATING_POINT names (``models.decision.operating_point``) and, unless
    RADLENS_OOD=off, that its OOD detector file matches its sha256.

    Raises:
        ModelNotFoundError, ModelCorruptError, ModelIncompatibleError, ConfigurationError:
            naming the model and the reason.
    """
    from radlens.models.decision import operating_point
    from radlens.models.registry import check_preprocessing_version

    store = Path(settings.model_store)
    if not store.exists():
        raise ModelNotFoundError(
            f"RADLENS_MODEL_STORE={store} does not exist: set RADLENS_MODEL_STORE to the "
            "directory `radlens train` wrote your models to (unset: models/store), or train a "
            "model first (`radlens train`; `make run` trains the demo model)"
        )
    registry = registry_for(settings)
    try:
        name, version = registry.resolve(settings.model)
    except ModelNotFoundError:
        if registry.list():
            raise  # another model or version than the store has: the message names them
        raise ModelNotFoundError(
            f"the model store RADLENS_MODEL_STORE={store} holds no models: train one into it "
            "(`radlens train`; `make run` trains the demo model) or set RADLENS_MODEL_STORE "
            "to the store that holds yours"
        ) from None
    registry.check_finished(name, version)  # RADLENS_MODEL=name:N while its run attaches
    manifest = registry.verify(name, version)  # seal (fields named), then model.keras sha256
    check_preprocessing_version(manifest)
    operating_point(manifest, settings.operating_point)
    if getattr(settings, "ood", "off") != "off":
        registry.ood_detector_file(manifest)  # the lifespan loads it: missing or altered, now
    return manifest


def preflight(settings: Settings, *, flags: Mapping[str, str] | None = None) -> PreflightReport:
    """The listeners and spool directories (``check_listeners``, ``check_spools``), the
    database at head (SQLite upgraded automatically), the model artifact verified, and the
    runtime settings checked against it.

    ``flags``: the settings a command-line flag set (``{"port": "--port"}``), named in a
    message instead of their variable.
    """
    check_listeners(settings, flags=flags)
    check_spools(settings)
    from radlens.app.db import make_engine
    from radlens.app.migrate import ensure_schema

    engine = make_engine(
        settings.database_url, connect_timeout_s=settings.database_connect_timeout_s
    )
    try:
        revision = ensure_schema(settings.database_url, engine)
    finally:
        engine.dispose()
    manifest = check_model(settings)
    # The device is chosen later (TensorFlow); here only RADLENS_DEVICE=gpu is known for sure.
    device_kind = "gpu" if settings.device == "gpu" else "cpu"
    selection = choose_runtime(settings, registry_for(settings), manifest, device_kind)
    return PreflightReport(schema_revision=revision, model=manifest, runtime=selection)


# --- listeners and spool directories ------------------------------------------------------


def _label(field: str, value: object, flags: Mapping[str, str] | None) -> str:
    """How a message names a setting: ``--port 8000`` when a flag set it, else
    ``RADLENS_PORT=8000`` (strings quoted, so an empty or spaced value shows)."""
    shown = repr(value) if isinstance(value, str) else str(value)
    flag = (flags or {}).get(field)
    return f"{flag} {shown}" if flag else f"RADLENS_{field.upper()}={shown}"


def _resolve(host: str, port: int) -> list[Any]:
    """``getaddrinfo`` as a listening server calls it (passive, TCP)."""
    return socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )


def _bind(info: Any) -> socket.socket:
    """A listening socket on one ``getaddrinfo`` result, with the options uvicorn (asyncio) and
    pynetdicom set: SO_REUSEADDR (a port in TIME_WAIT is free) and, for IPv6, V6ONLY."""
    family, kind, proto, _name, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(1)  # listening, so the other listener's probe collides with it
    except BaseException:
        sock.close()
        raise
    return sock


def listen_error(
    exc: OSError,
    *,
    host_field: str,
    port_field: str,
    host: str,
    port: int,
    flags: Mapping[str, str] | None = None,
    other: str | None = None,
) -> ConfigurationError:
    """The ConfigurationError for a server that could not resolve or bind ``host:port``: it
    names the setting at fault (host or port), the value and what to do. ``other``: the
    label of another listener on the same port (its probe holds it)."""
    host_label = _label(host_field, host, flags)
    port_label = _label(port_field, port, flags)
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, socket.gaierror):
        return ConfigurationError(
            f"{host_label} does not resolve ({reason}): set it to an IP address of this "
            "machine (127.0.0.1: this machine only; 0.0.0.0: every interface) or a host name "
            "that resolves to one"
        )
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        if other is not None:
            return ConfigurationError(
                f"{port_label} is the HTTP service's port too ({other}): give the DICOM "
                "Storage SCP a port of its own"
            )
        return ConfigurationError(
            f"{port_label}: {where} is already in use by another process: choose another "
            "port, or stop the process that listens on it"
        )
    if exc.errno == errno.EACCES:
        return ConfigurationError(
            f"{port_label}: binding {where} is not permitted ({reason}): choose a port from "
            "1024 up, or grant the privilege to bind low ports"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigurationError(
            f"{host_label} is not an address of this machine (binding {where}: {reason}): set "
            "it to one of its addresses (127.0.0.1: this machine only; 0.0.0.0: every "
            "interface)"
        )
    return ConfigurationError(f"{host_label}, {port_label}: cannot listen on {where} ({reason})")


def _probe(
    held: list[socket.socket],
    *,
    host_field: str,
    port_field: str,
    host: str,
    port: int,
    every_address: bool,
    flags: Mapping[str, str] | None,
    other: str | None = None,
) -> None:
    """Bind ``host:port`` as the server will (every address the name resolves to for uvicorn,
    the first for pynetdicom) and keep the sockets in ``held``; raise ConfigurationError naming
    the setting at fault."""

    def error(exc: OSError) -> ConfigurationError:
        return listen_error(
            exc,
            host_field=host_field,
            port_field=port_field,
            host=host,
            port=port,
            flags=flags,
            other=other,
        )

    try:
        infos = _resolve(host, port)
    except UnicodeError as exc:  # a label too long or empty for IDNA
        raise error(socket.gaierror(str(exc))) from None
    except OSError as exc:
        raise error(exc) from None
    for info in infos if every_address else infos[:1]:
        try:
            held.append(_bind(info))
        except OSError as exc:
            raise error(exc) from None


def check_listeners(settings: Settings, *, flags: Mapping[str, str] | None = None) -> None:
    """The HTTP address (RADLENS_HOST, RADLENS_PORT) and, when RADLENS_DIMSE_PORT is set, the
    Storage SCP's (RADLENS_DIMSE_BIND, RADLENS_DIMSE_PORT) resolve and can be listened on,
    together. The sockets are closed before this returns.

    Raises:
        ConfigurationError: naming the variable (or flag), the value and what to do.
    """
    held: list[socket.socket] = []
    try:
        _probe(
            held,
            host_field="host",
            port_field="port",
            host=settings.host,
            port=settings.port,
            every_address=True,  # asyncio's create_server binds every address of the name
            flags=flags,
        )
        if settings.dimse_port is not None:
            _probe(
                held,
                host_field="dimse_bind",
                port_field="dimse_port",
                host=settings.dimse_bind,
                port=settings.dimse_port,
                every_address=False,  # pynetdicom binds the first
                flags=flags,
                other=_label("port", settings.port, flags)
                if settings.dimse_port == settings.port
                else None,
            )
    finally:
        for sock in held:
            sock.close()
    if settings.dimse_port is not None:
        dimse_tls_context(settings)


def spool_directories(settings: Settings) -> dict[str, Path]:
    """The spool directories this configuration uses, by setting: the DIMSE inbox with
    RADLENS_DIMSE_ACK=queued, the outbox with RADLENS_DICOM_DESTINATIONS."""
    spools: dict[str, Path] = {}
    if settings.dimse_port is not None and settings.dimse_ack == "queued":
        spools["dimse_inbox_dir"] = Path(settings.dimse_inbox_dir)
    if settings.dicom_destinations:
        spools["dicom_outbox_dir"] = Path(settings.dicom_outbox_dir)
    return spools


def ensure_spool(field: str, directory: Path) -> None:
    """Create ``directory`` (as the service does, mode 0700) and check it is a writable
    directory.

    Raises:
        ConfigurationError: naming ``RADLENS_<field>``, the path, the reason and what to do.
    """
    label = _label(field, str(directory), None)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        blocker = next((p for p in directory.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            reason = f"{reason}: {blocker} is a file"
        raise ConfigurationError(
            f"{label} cannot be created ({reason}): set it to a directory radlens may create "
            "or write to"
        ) from None
    if not directory.is_dir():
        raise ConfigurationError(f"{label} is not a directory: set it to a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"{label} is not writable by this user: set it to a directory radlens may write to, "
            "or change its permissions"
        )


def check_spools(settings: Settings) -> None:
    """Each spool directory in use (``spool_directories``) exists or is created, and is
    writable: the service's own start-up creates them, so this creates nothing it would not."""
    for field, directory in spool_directories(settings).items():
        ensure_spool(field, directory)


def dimse_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The Storage SCP's TLS context: RADLENS_DIMSE_TLS_CERT/_KEY, and with _CA, peers must
    present a certificate that CA signed; None without a certificate.

    Raises:
        ConfigurationError: a file that cannot be read or is not what it should be, named.
    """
    import ssl

    s = settings
    if s.dimse_tls_cert is None or s.dimse_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(s.dimse_tls_cert, s.dimse_tls_key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(
            f"RADLENS_DIMSE_TLS_CERT={str(s.dimse_tls_cert)!r} and RADLENS_DIMSE_TLS_KEY="
            f"{str(s.dimse_tls_key)!r} are not a PEM certificate and its private key "
            f"({getattr(exc, 'reason', None) or exc}): set them to the certificate and key files"
        ) from None
    if s.dimse_tls_ca is not None:
        try:
            context.load_verify_locations(cafile=s.dimse_tls_ca)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"RADLENS_DIMSE_TLS_CA={str(s.dimse_tls_ca)!r} is not a PEM CA bundle "
                f"({getattr(exc, 'reason', None) or exc}): set it to the CA certificates file"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
