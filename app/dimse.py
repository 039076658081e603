"""DICOM Storage SCP (issue #24, receive side): C-STORE feeds the one ingest path.

Runs inside the HTTP service's process (the lifespan starts and stops it when
``RADLENS_DIMSE_PORT`` is set), so it shares the loaded model, the micro-batcher and the
writer. pynetdicom runs each association in its own thread; a C-STORE handler submits
``Ingestor.check_capacity`` + ``Ingestor.ingest`` to the service's event loop with
``asyncio.run_coroutine_threadsafe`` and waits: the response is Success (0x0000) only once
the prediction and its audit row are committed. The actor is ``dimse:<calling AE title>``.

A refused instance gets a failure status whose Error Comment is the error's title (never
the detail, which may quote the file; at most 64 characters): 0xA700 (out of resources)
for a busy service, 0xC000 (cannot understand) for data radlens cannot use, 0xA900 for an
instance too large, 0x0122 (SOP class not supported) for an instance of a class without
pixel data (an SR the site listed, with RADLENS_NON_IMAGE_INSTANCES=refuse). An instance the
intended-use gate flags (RADLENS_GATE=flag) is answered Success, C-STORE having no status for
it; a WARNING and a "dimse.store" audit row say it (``_note_intended_use``).

radlens's own SR and Secondary Capture (app/dicom_outputs.py) come back when a PACS forwards
a study the outbox filed them into: their two classes are always accepted at negotiation,
and an object radlens made is answered Success without being predicted (QA round 30: the SC
was predicted, a Grad-CAM of the Grad-CAM sent back in turn; the SR, rejected at
negotiation, failed Orthanc's whole store job).

A study also holds objects of classes that hold no image (reports, dose reports, key object
selections, presentation states, PDFs, RT plans ...: :data:`NON_IMAGE_STORAGE_SOP_CLASSES`).
With ``RADLENS_NON_IMAGE_INSTANCES=acknowledge`` (the default) they are accepted at
negotiation and answered Success without being read, predicted, stored or audited; each
association logs one line counting them by class (QA round 35: they were rejected at
negotiation, which failed a PACS's whole-study "Send to"). ``refuse`` keeps that rejection.

With ``RADLENS_DIMSE_ACK=queued`` the response is Success once the instance is durably
queued in app/dimse_inbox.py instead; the event loop then predicts the queued instances
concurrently (so a series on one association is micro-batched), and a restart finishes what
was queued. Then only the size, a full inbox (RADLENS_MAX_QUEUED_PREDICTIONS instances) and
a busy service are refused by status; a failure found later is an audit row. Replicas may
share the inbox directory: each predicts what it queued, and takes over only what a process
that stopped or died left (app/dimse_inbox.py, QA 82).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from radlens.app.dicom_outputs import OUTPUT_SOP_CLASSES, is_radlens_output
from radlens.app.dicomlog import quiet_pynetdicom
from radlens.app.dimse_inbox import DimseInbox, InboxUnreadableError, describe
from radlens.app.errors import ServiceBusyError
from radlens.app.ingest import Ingested, Ingestor
from radlens.app.settings import Settings
from radlens.models.errors import NoPixelDataError, RadlensError
from radlens.models.intended_use import holds_no_image, non_image_kind

logger = logging.getLogger(__name__)
quiet_pynetdicom()  # no UID as received in the log (app/dicomlog.py)

VERIFICATION = UID("1.2.840.10008.1.1")  # Verification SOP Class (C-ECHO)

# The storage SOP classes accepted by default (RADLENS_DIMSE_SOP_CLASSES replaces the list):
# the acquired radiology images whose pixels the shared preprocessing reads, as POST
# /v1/predictions takes them -- projection radiography (CR, DX, mammography, intra-oral, breast
# projection and tomosynthesis, XA, RF), CT, MR, NM, PET (classic, enhanced and legacy
# converted), ultrasound and secondary captures. Up to QA round 20 only CR, DX, CT, MR (and
# their enhanced forms) and SC were taken, so a model trained on mammograms or ultrasound
# could be sent its images over HTTP but not from a PACS: the association was rejected. Whether
# the loaded model is meant for an instance is the intended-use gate's decision (app/gate.py),
# made per instance with a reason the sender sees, as for HTTP. Derived objects (SEG,
# parametric maps, RT dose), video, microscopy and documents are not acquired radiology images
# and stay outside the default.
DEFAULT_STORAGE_SOP_CLASSES = (
    "ComputedRadiographyImageStorage",
    "DigitalXRayImageStorageForPresentation",
    "DigitalXRayImageStorageForProcessing",
    "DigitalMammographyXRayImageStorageForPresentation",
    "DigitalMammographyXRayImageStorageForProcessing",
    "DigitalIntraOralXRayImageStorageForPresentation",
    "DigitalIntraOralXRayImageStorageForProcessing",
    "BreastProjectionXRayImageStorageForPresentation",
    "BreastProjectionXRayImageStorageForProcessing",
    "BreastTomosynthesisImageStorage",
    "XRayAngiographicImageStorage",
    "EnhancedXAImageStorage",
    "XRayRadiofluoroscopicImageStorage",
    "EnhancedXRFImageStorage",
    "CTImageStorage",
    "EnhancedCTImageStorage",
    "LegacyConvertedEnhancedCTImageStorage",
    "MRImageStorage",
    "EnhancedMRImageStorage",
    "LegacyConvertedEnhancedMRImageStorage",
    "NuclearMedicineImageStorage",
    "PositronEmissionTomographyImageStorage",
    "EnhancedPETImageStorage",
    "LegacyConvertedEnhancedPETImageStorage",
    "UltrasoundImageStorage",
    "UltrasoundMultiFrameImageStorage",
    "SecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage",
)

# The storage SOP classes that hold no image a classifier could read, as the intended-use gate
# names them (models/intended_use.non_image_kind): every SR (Basic Text to Extensible, the
# X-ray, enhanced X-ray, radiopharmaceutical and patient dose SRs, CAD SRs, Key Object
# Selection), presentation states (grayscale, colour, pseudo-colour, blending, volumetric),
# encapsulated PDF/CDA/STL/OBJ/MTL, RT objects but the RT images, raw data, spatial
# registration and fiducials, segmentations, real world value mappings, surface scans and
# waveforms, among the storage classes pynetdicom knows. A PACS routes them with their study;
# with RADLENS_NON_IMAGE_INSTANCES=acknowledge they are accepted and not predicted.
NON_IMAGE_STORAGE_SOP_CLASSES = tuple(
    str(context.abstract_syntax)
    for context in AllStoragePresentationContexts
    if holds_no_image(context.abstract_syntax)
)

# How often a running SCP with an inbox looks for queued files that no live process holds any
# more (a replica sharing RADLENS_DIMSE_INBOX_DIR stopped or died with instances unfinished;
# app/dimse_inbox.py), besides at its start: so they do not wait for a process to start.
ADOPT_INTERVAL_S = 30.0


def inbox_slots(settings: Settings) -> int:
    """How many queued instances are read and predicted at once (RADLENS_DIMSE_ACK=queued):
    four model calls' worth (RADLENS_MAX_BATCH_SIZE x RADLENS_INFERENCE_STREAMS), at least 32,
    so the micro-batcher always has full batches. The others wait on disk. Until QA 110 every
    queued instance was read into memory as it was queued (or taken over at start): a series
    of 734 CT slices of 512 KB queued behind a slow model held 424 MB more
    (docs/benchmarks/dimse.md), RADLENS_MAX_QUEUED_PREDICTIONS x the instance size at most."""
    return max(32, 4 * settings.max_batch_size * settings.inference_streams)


STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_TOO_LARGE = 0xA900  # dataset does not match SOP class (used: exceeds the limits)
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # refused: SOP class not supported


DATABASE_DOWN = "radlens database unreachable; retry later"  # an Error Comment

# a refused C-STORE's audit status, as the REST routes answer the same refusal
_HTTP_LIKE = {
    STATUS_CANNOT_UNDERSTAND: 422,
    STATUS_TOO_LARGE: 413,
    STATUS_OUT_OF_RESOURCES: 503,
    STATUS_PROCESSING_FAILURE: 500,
    STATUS_SOP_CLASS_NOT_SUPPORTED: 422,
}


def prefer_the_senders_syntaxes(event: Any) -> None:
    """Order each supported context's transfer syntaxes as the sender proposed them, before
    the association is negotiated (EVT_REQUESTED).

    Within one presentation context pynetdicom accepts the first syntax of the *acceptor's*
    list that the sender offers, and ALL_TRANSFER_SYNTAXES starts with Implicit VR Little
    Endian: a sender proposing ``[JPEG Baseline, Explicit VR LE]`` for a JPEG image was asked
    to convert it (dcmtk's ``storescu +C`` then failed to send). The sender's order (its
    first proposal for the SOP class) now comes first, then the rest of radlens' list."""
    from pynetdicom.presentation import build_context

    requested = event.assoc.requestor.primitive.presentation_context_definition_list
    order: dict[str, list[str]] = {}
    for context in requested:
        order.setdefault(str(context.abstract_syntax), list(context.transfer_syntax))
    contexts = []
    for context in event.assoc.acceptor.supported_contexts:
        proposed = order.get(str(context.abstract_syntax))
        if proposed:
            mine = list(context.transfer_syntax)
            preferred = [ts for ts in proposed if ts in mine] + [
                ts for ts in mine if ts not in proposed
            ]
            reordered = build_context(context.abstract_syntax, preferred)
            reordered.scu_role, reordered.scp_role = context.scu_role, context.scp_role
            context = reordered
        contexts.append(context)
    event.assoc.acceptor.supported_contexts = contexts


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _header(data: bytes, max_pixels: int) -> Dataset | None:
    """The attributes the SCP decides on before the ingest (SOP class, manufacturer, series,
    whether there is pixel data), read with the project's reader: a deflated data set is
    inflated only within the pixel limit (pynetdicom's ``event.dataset`` inflated it whole, a
    deflate bomb acknowledged in queued mode took a gigabyte per megabyte, QA round 30).

    Raises:
        DeflatedDatasetTooLargeError: it inflates beyond the limit.
    Returns None when the header cannot be read here (the ingest names what is wrong)."""
    from radlens.models.dicomread import read_dicom_bytes
    from radlens.models.errors import DeflatedDatasetTooLargeError

    try:
        return read_dicom_bytes(
            data,
            max_pixels=max_pixels,
            force=True,
            specific_tags=[
                "SOPClassUID",
                "Manufacturer",
                "SeriesDescription",
                "SeriesNumber",
                *_PIXEL_KEYWORDS,
            ],
        )
    except DeflatedDatasetTooLargeError:
        raise
    except Exception:  # third-party parser boundary: the ingest names the failure
        return None


def _holds_pixels(header: Dataset | None) -> bool:
    """Whether the instance has pixel data (any kind); True when its header could not be
    read, for the ingest to say what is wrong with it."""
    return header is None or any(k in header for k in _PIXEL_KEYWORDS)


def _no_pixels(sop_class: str) -> int:
    """The status of an instance without pixel data: 0x0122 (SOP class not supported) for a
    class that has none (an SR or a PDF listed in RADLENS_DIMSE_SOP_CLASSES under
    RADLENS_NON_IMAGE_INSTANCES=refuse; else it is acknowledged), 0xC000 for an image class
    (a CT without pixel data is a broken instance). 0xC000 for both until QA round 30, while
    docs/pacs-integration.md promised 0x0122 for the former."""
    image = "Image" in UID(sop_class).name  # every class of DEFAULT_STORAGE_SOP_CLASSES
    return STATUS_CANNOT_UNDERSTAND if image else STATUS_SOP_CLASS_NOT_SUPPORTED


def _class_name(sop_class: str) -> str:
    """A storage class's name for the log (pydicom's; what it holds when pydicom names none)."""
    name = UID(sop_class).name
    return name if name != sop_class else (non_image_kind(sop_class) or "another class")


def _log_unexpected(what: str, exc: BaseException) -> None:
    """An unexpected failure: its type and stack frames, not its message, which may quote the
    instance (as the HTTP path's CatchAllMiddleware logs)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("%s: unexpected %s (message withheld)\n%s", what, type(exc).__name__, frames)


def error_comment(text: str) -> str:
    """An Error Comment (LO: at most 64 characters, no backslash); a longer text is cut at a
    word and ends in "..." (an error's own ``comment`` fits: models.errors)."""
    text = text.replace("\\", "/")
    if len(text) <= 64:
        return text
    return text[:61].rsplit(" ", 1)[0].rstrip(" ;,:(") + "..."


class HandshakeInWorkerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the DICOM TLS handshake moved out of the accept loop.

    pynetdicom wraps each accepted socket in TLS inside ``get_request``, which runs on the one
    thread that accepts connections, with no time limit: a peer that opened a TCP connection
    and never sent its TLS hello (a port scanner, a half-open load-balancer probe, a sender
    misconfigured for plain DICOM that waits for us) stopped every other association until it
    went away. Here the accept loop only accepts; the handshake runs on the connection's own
    thread, bounded by RADLENS_DIMSE_NETWORK_TIMEOUT_S, and a failed one is logged with the
    peer's address and the reason (it was dropped silently).
    """

    def get_request(self) -> tuple[Any, Any]:
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            timeout = request.gettimeout()
            try:
                request.settimeout(self.ae.network_timeout)
                request.do_handshake()
                request.settimeout(timeout)
            except OSError as exc:  # ssl.SSLError, TimeoutError, a reset: all OSError
                logger.warning(
                    "DICOM TLS handshake from %s refused: %s",
                    _peer(client_address),
                    getattr(exc, "reason", None) or str(exc) or type(exc).__name__,
                )
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def _peer(address: Any) -> str:
    """host:port of a peer (IPv6 hosts in brackets)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


class StorageSCP:
    """The Storage SCP; ``start`` from the event loop's thread, ``stop`` on shutdown."""

    def __init__(
        self, settings: Settings, ingestor: Ingestor, sessionmaker: Any | None = None
    ) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.sessionmaker = sessionmaker  # audit rows of queued instances that fail later
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.inbox: DimseInbox | None = None
        self._queued: set[Path] = set()  # in the inbox and not yet finished (loop thread)
        self._tasks: set[asyncio.Task[None]] = set()
        self._adopter: asyncio.Task[None] | None = None
        # the queued instances read and predicted at once (the rest wait, on disk only)
        self._slots = asyncio.Semaphore(inbox_slots(settings))
        self.queued = settings.dimse_ack == "queued"
        self.acknowledge_non_images = settings.non_image_instances == "acknowledge"
        # per open association: the instances of non-image classes acknowledged, by class name
        # (logged once as it closes, _log_acknowledged); written on association threads
        self._acknowledged: dict[Any, Counter[str]] = {}
        self._acknowledged_lock = threading.Lock()
        inbox_dir = Path(settings.dimse_inbox_dir)
        if self.queued:
            from radlens.app.startup import ensure_spool

            # a path that cannot be a directory: one line naming RADLENS_DIMSE_INBOX_DIR
            ensure_spool("dimse_inbox_dir", inbox_dir)
            self.inbox = DimseInbox(inbox_dir, settings.uid_pseudonym_key_bytes, owner=True)
        elif inbox_dir.is_dir() and any(inbox_dir.glob("*.dcm")):
            # switched from queued to committed with instances still queued: they were
            # acknowledged, so they are predicted now (nothing new is queued); those a live
            # process sharing the directory holds are its own (start: adopt)
            self.inbox = DimseInbox(inbox_dir, settings.uid_pseudonym_key_bytes, owner=True)

    @property
    def port(self) -> int:
        """The bound port (the OS's choice when RADLENS_DIMSE_PORT is 0)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def _ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.dimse_ae_title)
        ae.maximum_associations = s.dimse_max_associations
        ae.maximum_pdu_size = s.dimse_max_pdu_size
        ae.acse_timeout = s.dimse_acse_timeout_s
        ae.dimse_timeout = s.dimse_dimse_timeout_s
        ae.network_timeout = s.dimse_network_timeout_s
        allowed = s.dimse_allowed_ae_title_list
        if allowed:
            ae.require_calling_aet = allowed
        ae.require_called_aet = s.dimse_require_called_ae_title
        ae.add_supported_context(VERIFICATION)
        for sop_class in s.dimse_sop_class_uids:
            # every syntax pydicom (and its plugins) decodes, in the order each sender proposes
            # them (prefer_the_senders_syntaxes): accepted as sent, never re-encoded
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        added = set(s.dimse_sop_class_uids)
        # radlens's own SR and SC, which a PACS sends back with the study they were filed
        # into: acknowledged, not predicted (_store). Rejected at negotiation, the SR failed
        # the whole "Send to" of such a study in Orthanc (QA round 30). Then, unless the site
        # refuses them, the classes that hold no image, which a study carries beside its
        # images: rejected at negotiation, one of them failed the whole "Send to" (QA round 35)
        others = list(OUTPUT_SOP_CLASSES)
        if self.acknowledge_non_images:
            others += NON_IMAGE_STORAGE_SOP_CLASSES
        for sop_class in others:
            if sop_class not in added:
                ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
                added.add(sop_class)
        return ae

    def start(self) -> None:
        """Listen. An address that does not resolve, a port in use or bad TLS files raise
        ConfigurationError naming the variable (the server reports it in one line)."""
        from radlens.app.startup import listen_error

        self._loop = asyncio.get_running_loop()
        # listed before the server listens (an instance queued from then on is spawned by its
        # C-STORE), spawned after: nothing runs before start returns, and nothing is spawned
        # when the server cannot start
        left, others = self.inbox.adopt() if self.inbox is not None else ([], 0)
        ae = self._ae()
        ssl_context = self._tls()
        try:
            server = ae.make_server(
                (self.settings.dimse_bind, self.settings.dimse_port or 0),
                evt_handlers=[
                    (evt.EVT_REQUESTED, prefer_the_senders_syntaxes),
                    (evt.EVT_REQUESTED, self._answer_first),
                    (evt.EVT_REJECTED, self._log_rejected),
                    (evt.EVT_DIMSE_RECV, self._answer_store_without_instance_uid),
                    (evt.EVT_C_STORE, self._handle_store),
                    (evt.EVT_CONN_CLOSE, self._log_acknowledged),
                ],
                ssl_context=ssl_context,
                server_class=HandshakeInWorkerServer,
            )
        except OSError as exc:
            raise listen_error(
                exc,
                host_field="dimse_bind",
                port_field="dimse_port",
                host=self.settings.dimse_bind,
                port=self.settings.dimse_port or 0,
            ) from None
        # what ae.start_server(block=False) does, with the server class above: the AE keeps
        # its servers (the server's shutdown() takes itself off that list)
        ae._servers.append(server)
        threading.Thread(
            target=make_target(server.serve_forever), name="radlens-dimse-acceptor", daemon=True
        ).start()
        self._server = server
        if left:
            logger.info("DIMSE inbox: %d instances queued before a restart", len(left))
        if others:
            # another process sharing RADLENS_DIMSE_INBOX_DIR (a replica, a second listener)
            # holds them: it predicts them; a process that stops or dies releases them to the
            # next one that starts (app/dimse_inbox.py)
            logger.info(
                "DIMSE inbox: %d queued instances are held by another live radlens process "
                "sharing %s; left to it",
                others,
                self.inbox.directory if self.inbox is not None else "",
            )
        for path in left:  # acknowledged by a previous process: finish them first
            self._spawn(path)
        if self.inbox is not None:
            self._adopter = self._loop.create_task(self._adopt_periodically())
        logger.info(
            "DIMSE Storage SCP %s listening on %s:%d",
            self.settings.dimse_ae_title,
            self.settings.dimse_bind,
            self.port,
        )
        self._warn_when_nothing_is_gated()

    def _warn_when_nothing_is_gated(self) -> None:
        """A WARNING when every class of the default list will be predicted: the model states
        no intended use (or RADLENS_GATE=off) and RADLENS_DIMSE_SOP_CLASSES is unset. A PACS
        that routes everything then gets ultrasound, NM or PET predicted by, say, a chest
        radiograph model trained on PNGs (only the OOD flag marks them)."""
        from radlens.models.intended_use import from_record

        s = self.settings
        manifest = self.ingestor.predictor.manifest
        stated = not from_record(getattr(manifest, "intended_use", None)).empty
        if s.dimse_sop_classes is not None or (stated and s.gate != "off"):
            return
        ref = getattr(manifest, "ref", "the loaded model")
        why = "RADLENS_GATE=off" if stated else f"model {ref} states no intended use"
        logger.warning(
            "DIMSE: %s, so every image class the SCP accepts is predicted (%d classes: CR, DX, "
            "MG, CT, MR, US, XA, NM, PET, SC ...); state the model's intended modalities in "
            "training, or set RADLENS_DIMSE_SOP_CLASSES to the classes to accept",
            why,
            len(s.dimse_sop_class_uids),
        )

    def _log_rejected(self, event: Any) -> None:
        """Say who was turned away and which setting did it (EVT_REJECTED): pynetdicom's own
        lines name neither the peer nor the titles, and the sender learns only DICOM's reason
        code. The checks are pynetdicom's, in its order (the last one that applies is sent);
        pynetdicom does not pass its reason on, so it is worked out again here, and when none
        applies any more the association limit had been reached when pynetdicom decided."""
        s, assoc = self.settings, event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        limit = (
            f"{s.dimse_max_associations} associations already open "
            "(RADLENS_DIMSE_MAX_ASSOCIATIONS; the sender may retry)"
        )
        reason = limit
        allowed = s.dimse_allowed_ae_title_list
        if allowed and calling not in allowed:
            reason = "calling AE title not in RADLENS_DIMSE_ALLOWED_AE_TITLES"
        if s.dimse_require_called_ae_title and called != s.dimse_ae_title:
            reason = (
                f"called AE title is not {s.dimse_ae_title} (RADLENS_DIMSE_AE_TITLE; "
                "RADLENS_DIMSE_REQUIRE_CALLED_AE_TITLE is on)"
            )
        acceptors = [a for a in assoc.ae.active_associations if a.is_acceptor]
        if len(acceptors) > s.dimse_max_associations:
            reason = limit
        logger.warning(
            "DICOM association from %s:%s (calling %r, called %r) rejected: %s",
            assoc.requestor.address,
            assoc.requestor.port,
            calling,
            called,
            reason,
        )

    def _answer_first(self, event: Any) -> None:
        """Put ``_answer_store_without_instance_uid`` before the association's other
        EVT_DIMSE_RECV handlers (pynetdicom binds its logging handler first, and a handler that
        raises stops the ones after it). EVT_REQUESTED comes before any DIMSE message."""
        assoc, own = event.assoc, self._answer_store_without_instance_uid
        others = [(f, a) for f, a in assoc.get_handlers(evt.EVT_DIMSE_RECV) if f != own]
        for func, _args in others:
            assoc.unbind(evt.EVT_DIMSE_RECV, func)
        for func, args in others:
            assoc.bind(evt.EVT_DIMSE_RECV, func, args)

    def _answer_store_without_instance_uid(self, event: Any) -> None:
        """Refuse a C-STORE request that names no Affected SOP Instance UID (0000,1000).

        pynetdicom drops such a request unanswered (not a valid request), so the sender waited
        for its DIMSE timeout and the association stayed open until the network timeout (QA
        round 15: 60 s). Runs as the complete message arrives (EVT_DIMSE_RECV, on the
        association's reader thread) and answers it here, Error Comment included; the UID
        names the instance in the prediction's provenance, so there is nothing to predict."""
        command = event.message.command_set
        if command.get("CommandField") != 0x0001:  # C-STORE-RQ
            return
        if str(command.get("AffectedSOPInstanceUID", "") or "").strip():
            return
        if command.get("MessageID") is None:  # nothing to answer to: pynetdicom aborts
            return
        from pynetdicom.dimse_primitives import C_STORE

        # pynetdicom's own logging handler for this event reads the element: an empty one
        # keeps it from failing with a traceback in the log
        command.AffectedSOPInstanceUID = ""
        calling = str(event.assoc.requestor.ae_title).strip()
        comment = "C-STORE request has no Affected SOP Instance UID (0000,1000)"
        logger.warning(
            "C-STORE from %s:%s (calling %r) refused: 0x%04X %s; the sender must set the "
            "instance's SOP Instance UID",
            event.assoc.requestor.address,
            event.assoc.requestor.port,
            calling,
            STATUS_CANNOT_UNDERSTAND,
            comment,
        )
        response = C_STORE()
        response.MessageIDBeingRespondedTo = command.MessageID
        if command.get("AffectedSOPClassUID"):
            response.AffectedSOPClassUID = command.AffectedSOPClassUID
        response.Status = STATUS_CANNOT_UNDERSTAND
        response.ErrorComment = comment  # type: ignore[assignment]  # (pynetdicom types it None)
        event.assoc.dimse.send_msg(response, event.message.context_id)
        if self.sessionmaker is not None:
            from radlens.app.audit import record_apart

            record_apart(
                self.sessionmaker,
                actor=f"dimse:{calling}"[:32],
                action="dimse.store",
                status=_HTTP_LIKE[STATUS_CANNOT_UNDERSTAND],
                query=f"reason={comment}",
            )

    def _tls(self) -> ssl.SSLContext | None:
        """DICOM TLS when RADLENS_DIMSE_TLS_CERT/_KEY are set; with _CA, peers must present a
        certificate that CA signed."""
        from radlens.app.startup import dimse_tls_context

        return dimse_tls_context(self.settings)  # a bad file: ConfigurationError naming it

    def stop(self) -> None:
        """Stop listening; queued instances not finished stay in the inbox for the next start."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    async def _adopt_periodically(self) -> None:
        """Every ADOPT_INTERVAL_S, take over and predict the queued files that another process
        sharing the inbox released unfinished (it stopped or died)."""
        assert self.inbox is not None
        while True:
            await asyncio.sleep(ADOPT_INTERVAL_S)
            try:
                adopted, _others = await asyncio.to_thread(self.inbox.adopt)
            except OSError as exc:  # the volume went away: the next pass tries again
                logger.warning("DIMSE inbox: queued files not listed: %s", exc)
                continue
            if adopted:
                logger.info(
                    "DIMSE inbox: %d instances another process left unfinished taken over",
                    len(adopted),
                )
            for path in adopted:
                self._spawn(path)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait (bounded) for the queued instances being processed, then cancel the rest, and
        release the inbox's files still queued (the next process to start takes them over)."""
        if self._adopter is not None:
            self._adopter.cancel()
            self._adopter = None
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        if self.inbox is not None:
            self.inbox.close()

    def _handle_store(self, event: Any) -> int | Dataset:
        calling = event.assoc.requestor.ae_title.strip()
        status, comment = self._store(event, calling)
        if status == STATUS_SUCCESS:
            return status
        logger.warning("C-STORE from %s refused: 0x%04X %s", calling, status, comment)
        # audited as a refused HTTP upload is (it was not, QA 15); not while the database is
        # down: the row could not be written, and trying would hold the answer back
        if self.sessionmaker is not None and comment != DATABASE_DOWN:
            from radlens.app.audit import record_apart

            record_apart(
                self.sessionmaker,
                actor=f"dimse:{calling}"[:32],
                action="dimse.store",
                status=_HTTP_LIKE.get(status, 500),
                query=f"reason={comment}"[:512],
            )
        response = Dataset()
        response.Status = status
        response.ErrorComment = error_comment(comment)
        return response

    def _store(self, event: Any, calling: str) -> tuple[int, str]:
        assert self._loop is not None
        sop_class = str(event.context.abstract_syntax)
        if self.acknowledge_non_images and holds_no_image(sop_class):
            # a report, presentation state, document, RT plan ... sent with its study: nothing
            # to predict; not read, stored or audited (so its size does not matter either)
            self._count_acknowledged(event.assoc, sop_class)
            return STATUS_SUCCESS, ""
        data = event.encoded_dataset()  # preamble + file meta + the dataset as sent
        if len(data) > self.settings.max_upload_bytes:
            return STATUS_TOO_LARGE, "Instance larger than RADLENS_MAX_UPLOAD_BYTES"
        header = None
        if self.queued or sop_class in OUTPUT_SOP_CLASSES:
            try:
                header = _header(data, self.settings.max_pixels)
            except RadlensError as exc:  # a deflate bomb
                return STATUS_CANNOT_UNDERSTAND, getattr(exc, "comment", exc.title)
        if sop_class in OUTPUT_SOP_CLASSES:
            if header is not None and is_radlens_output(header):
                logger.info(
                    "C-STORE from %s: a radlens %s sent back, acknowledged and not predicted",
                    calling,
                    "SR" if sop_class == OUTPUT_SOP_CLASSES[0] else "Secondary Capture",
                )
                return STATUS_SUCCESS, ""
            if sop_class not in self.settings.dimse_sop_class_uids:
                return STATUS_SOP_CLASS_NOT_SUPPORTED, "SOP class not in RADLENS_DIMSE_SOP_CLASSES"
        if self.queued:
            # refused now, while it can be, what ingest would refuse after the acknowledgement
            # from the header alone: no pixel data, a modality outside the intended use
            if not _holds_pixels(header):
                return _no_pixels(sop_class), NoPixelDataError.comment
            try:
                self.ingestor.refuse_outside_intended_use(data)
            except RadlensError as exc:
                return STATUS_CANNOT_UNDERSTAND, getattr(exc, "comment", exc.title)
            return self._queue(data, calling)
        future = asyncio.run_coroutine_threadsafe(self._ingest(data, calling), self._loop)
        try:
            future.result(timeout=self.settings.dimse_dimse_timeout_s)
        except ServiceBusyError as exc:
            return STATUS_OUT_OF_RESOURCES, exc.comment
        except NoPixelDataError as exc:
            return _no_pixels(sop_class), exc.comment
        except RadlensError as exc:
            # the gate's refusals say why (attribute and value, app/gate.py); others the title
            return STATUS_CANNOT_UNDERSTAND, getattr(exc, "comment", exc.title)
        except TimeoutError:
            # not cancelled: it may be committing now, and then its results are sent as usual;
            # the sender's retry finds it stored
            return STATUS_OUT_OF_RESOURCES, "Prediction not committed in time; retry"
        except Exception as exc:
            if _database_down(exc):
                logger.warning("C-STORE from %s: the database cannot be reached", calling)
                return STATUS_OUT_OF_RESOURCES, DATABASE_DOWN
            _log_unexpected(f"C-STORE from {calling} failed", exc)
            return STATUS_PROCESSING_FAILURE, "radlens could not store the instance"
        return STATUS_SUCCESS, ""

    def _count_acknowledged(self, assoc: Any, sop_class: str) -> None:
        with self._acknowledged_lock:
            self._acknowledged.setdefault(assoc, Counter())[_class_name(sop_class)] += 1

    def _log_acknowledged(self, event: Any) -> None:
        """One line per association that brought instances of non-image classes, as it closes
        (EVT_CONN_CLOSE: released, aborted or timed out): how many, by class name (never a
        UID; a study's presentation states would otherwise make a line each)."""
        with self._acknowledged_lock:
            counts = self._acknowledged.pop(event.assoc, None)
        if not counts:
            return
        requestor = event.assoc.requestor
        logger.info(
            "DICOM association from %s:%s (calling %r): %d instances of classes that hold no "
            "image acknowledged, not predicted (%s)",
            requestor.address,
            requestor.port,
            str(requestor.ae_title).strip(),
            sum(counts.values()),
            ", ".join(f"{name}: {n}" for name, n in sorted(counts.items())),
        )

    async def _ingest(self, data: bytes, calling: str) -> None:
        self.ingestor.check_capacity()
        result = await self.ingestor.ingest(data, f"dimse:{calling}")
        await self._note_intended_use(result, calling)

    async def _note_intended_use(self, result: Ingested, calling: str) -> None:
        """RADLENS_GATE=flag: an instance stored, or answered from the store, whose header is
        outside the model's intended use (or a re-send whose verdict differs from the stored
        prediction's) is still answered Success: C-STORE's only warnings (PS3.4 B.2.3: 0xB000
        coercion of data elements, 0xB006 elements discarded, 0xB007 data set does not match
        the SOP class) say what the SCP did to the data set, and a sender may retry or alarm on
        a failure. So the log says it (WARNING: the prediction id, attribute and value, never
        a UID) and a "dimse.store" audit row records it (target the instance's UID as stored,
        a pseudonym under RADLENS_UID_PSEUDONYM_KEY, as a refusal's row; the query names the
        prediction and the verdict), as the REST answers' ``intended_use_violations`` and
        STOW-RS's (0099,1007/1008) do (QA 93)."""
        mine, stored = result.intended_use_verdict()
        if not mine and stored is None:
            return
        verdict = "inside the model's intended use"
        if mine:
            verdict = f"outside the model's intended use ({_violations(mine)})"
        if stored is not None:
            verdict += f"; the stored prediction's: {_violations(stored) or 'not flagged'}"
        logger.warning(
            "C-STORE from %s: prediction %s (%s) is %s; answered Success (C-STORE has no "
            "status for a flagged result)",
            calling,
            result.prediction.id,
            "new" if result.created else "already stored",
            verdict,
        )
        reason = "outside-intended-use" if mine else "inside-intended-use"
        stored_said = f"; stored={_violations(stored) or 'none'}" if stored is not None else ""
        await self._audit(
            calling,
            201 if result.created else 200,
            f"{reason} prediction={result.prediction.id}: "
            f"{_violations(mine) or 'none'}{stored_said}",
            result.prediction.sop_instance_uid,
        )

    # --- RADLENS_DIMSE_ACK=queued ---------------------------------------------------------

    def _queue(self, data: bytes, calling: str) -> tuple[int, str]:
        """Durably queue, then answer Success (on the association's thread)."""
        assert self._loop is not None and self.inbox is not None
        if len(self._queued) >= self.settings.max_queued_predictions:
            return STATUS_OUT_OF_RESOURCES, "radlens DIMSE inbox full; retry later"
        try:
            path = self.inbox.put(data, calling)
        except OSError as exc:
            logger.error("DIMSE inbox: instance from %s not queued: %s", calling, exc)
            return STATUS_OUT_OF_RESOURCES, "radlens could not queue the instance"
        self._queued.add(path)
        self._loop.call_soon_threadsafe(self._spawn, path)
        return STATUS_SUCCESS, ""

    def _spawn(self, path: Path) -> None:
        self._queued.add(path)
        task = asyncio.get_running_loop().create_task(self._process(path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, path: Path) -> None:
        """Predict and commit one queued instance; delete its file once that is done."""
        assert self.inbox is not None
        calling = self.inbox.calling_ae(path)
        data: bytes | None = None
        try:
            await self._slots.acquire()  # cancelled while waiting: the file stays queued
        except asyncio.CancelledError:
            self._queued.discard(path)
            raise
        try:
            try:
                data = await self._read_until_done(path, calling)
            except InboxUnreadableError as exc:  # kept aside, never deleted: see its message
                kept = await asyncio.to_thread(self.inbox.set_aside, path)
                logger.error("DIMSE inbox: %s; kept as %s", exc, kept.name)
                await self._audit(calling, 500, str(exc))
                return
            await self._ingest_until_done(data, calling)
        except asyncio.CancelledError:
            raise  # shutting down: the file stays for the next start
        except (RadlensError, ValueError, OSError) as exc:
            await self._failed(path, calling, 422, describe(exc), data)
        except Exception as exc:
            _log_unexpected(f"DIMSE inbox: queued instance from {calling} failed", exc)
            await self._failed(path, calling, 500, describe(exc), data)
        else:
            self.inbox.remove(path)
        finally:
            self._slots.release()
            self._queued.discard(path)

    async def _read_until_done(self, path: Path, calling: str) -> bytes:
        """A queued instance's bytes; a file that cannot be read now (no descriptor left, an
        I/O error, a volume gone) stays queued and is read again, 1 s later, then doubling up to
        30 s (logged once). Until QA 110 such an OSError counted as a failure of the instance:
        acknowledged to its sender, its file was deleted unpredicted (172 of 473 instances of a
        series under ``ulimit -n 256``). A file that is gone (FileNotFoundError) is raised."""
        assert self.inbox is not None
        waited = 0.0
        while True:
            try:
                data = await asyncio.to_thread(self.inbox.read, path)
            except FileNotFoundError:
                raise
            except OSError as exc:
                if waited == 0.0:
                    logger.warning(
                        "DIMSE inbox: a queued instance from %s cannot be read now (%s); it "
                        "stays queued and is read again",
                        calling,
                        exc.strerror or type(exc).__name__,
                    )
                pause = min(30.0, max(1.0, waited))
                await asyncio.sleep(pause)
                waited += pause
            else:
                if waited:
                    logger.info("DIMSE inbox: the instance from %s was read", calling)
                return data

    async def _ingest_until_done(self, data: bytes, calling: str) -> None:
        """Ingest an acknowledged instance; wait out a full queue or a database that cannot be
        reached (it was acknowledged: it is never dropped for a transient reason)."""
        waited = 0.0
        while True:
            try:
                await self._ingest(data, calling)
            except ServiceBusyError:  # wait for room
                await asyncio.sleep(0.2)
            except Exception as exc:
                if not _database_down(exc):
                    raise
                if waited == 0.0:
                    logger.warning(
                        "DIMSE inbox: the database cannot be reached; the instance from %s "
                        "stays queued and is retried",
                        calling,
                    )
                pause = min(30.0, max(1.0, waited))  # 1 s, then doubling, at most 30 s
                await asyncio.sleep(pause)
                waited += pause
            else:
                if waited:
                    logger.info("DIMSE inbox: the instance from %s was predicted", calling)
                return

    async def _failed(
        self, path: Path, calling: str, status: int, reason: str, data: bytes | None = None
    ) -> None:
        assert self.inbox is not None
        logger.warning(
            "DIMSE inbox: queued instance from %s not predicted (%d): %s", calling, status, reason
        )
        # the audit row names the instance (as a prediction row would: pseudonymised under
        # RADLENS_UID_PSEUDONYM_KEY), so the sender can be asked for it again (QA round 15)
        target = await asyncio.to_thread(self._instance_ref, data) if data else None
        await self._audit(calling, status, reason, target)
        self.inbox.remove(path)

    def _instance_ref(self, data: bytes) -> str | None:
        """The SOP Instance UID of a queued instance's bytes, as the predictions table would
        store it (pseudonymised when the site says so); None when it cannot be read."""
        from radlens.app.pseudonym import pseudonymise_uid
        from radlens.models.dicomread import read_dicom_bytes

        try:  # the project's reader: a deflated data set is inflated within the pixel limit
            ds = read_dicom_bytes(
                data,
                max_pixels=self.settings.max_pixels,
                stop_before_pixels=True,
                force=True,
                specific_tags=["SOPInstanceUID"],
            )
            uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        except Exception:  # a deflate bomb, a broken header: the row then names no instance
            return None
        if not uid:
            return None
        return pseudonymise_uid(uid, self.settings.uid_pseudonym_key_bytes)

    async def _audit(
        self, calling: str, status: int, reason: str, target: str | None = None
    ) -> None:
        if self.sessionmaker is not None:
            from radlens.app.audit import record_apart

            await asyncio.to_thread(
                record_apart,
                self.sessionmaker,
                actor=f"dimse:{calling}"[:32],
                action="dimse.store",
                status=status,
                target=target[:64] if target else None,
                query=f"reason={reason}",
            )


def _violations(records: list[dict[str, Any]] | None) -> str:
    """Intended-use violations for a log line or an audit row: ``BodyPartExamined 'WRIST'``
    (app/gate.py records; printable ASCII, each value at most 64 characters)."""

    def value(v: Any) -> str:
        return "".join(c for c in str(v) if " " <= c <= "~")[:64]

    return "; ".join(f"{r.get('attribute')} {value(r.get('value'))!r}" for r in records or [])


def _database_down(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now (transient: retry), as the
    REST routes answer it 503 (app/errors.py)."""
    from sqlalchemy.exc import OperationalError

    from radlens.app.errors import DatabaseUnavailableError

    return isinstance(exc, OperationalError | DatabaseUnavailableError)
