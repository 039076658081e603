"""Inference runtimes: TensorFlow, or OpenVINO (fp32 or bf16) converted from the stored model.

OpenVINO runs this project's ResNet50 several times faster on a CPU with bf16 support (AMX or
AVX-512 BF16) than TensorFlow fp32 (docs/benchmarks/serve.md, "Runtimes"). A converted model
lives beside ``model.keras`` in its version directory, listed with its sha256 in the
manifest's ``runtimes.openvino`` entry together with the *parity* measured when it was made:
how far its scores are from the Keras model's on real images (validation split).

The pieces, each small:

- :func:`convert_to_openvino`: Keras model -> OpenVINO IR (``model.xml`` + ``model.bin``),
  the documented way (``openvino.convert_model`` on the Keras model, ``openvino.save_model``).
  For a version with an OOD detector the IR also returns the features the detector reads (a
  second output named after its layers, :data:`OOD_FEATURES`), so serving takes scores and
  features from one OpenVINO call instead of a second forward pass in TensorFlow.
- :func:`measure_parity`: reference vs candidate scores on labelled images -> :class:`Parity`
  (AUC difference via scikit-learn, largest score difference, labels that flip at the
  threshold). Pure, on arrays.
- :func:`select_runtime`: the rule (settings + device + CPU capability + recorded parity +
  tolerance) -> :class:`Selection`, pure, or :class:`~models.errors.RuntimeUnavailableError`
  when an explicit setting cannot be honoured. ``auto`` falls back to TensorFlow fp32.
- :class:`OpenVINORuntime`: ``predict(batch) -> scores``, the contract of
  ``models.registry.predict_scores``.
- :func:`add_openvino_runtime`: convert a stored version, measure parity, and attach the
  files to it atomically (``ModelRegistry.add_runtime``); what ``radlens models convert`` and
  training export call.

bf16 support is read from the OpenVINO CPU device's ``OPTIMIZATION_CAPABILITIES``; parity for
bf16 is only measured (and bf16 only served) where the CPU has it, since elsewhere the bf16
hint silently runs fp32 and the figures would prove nothing.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from radlens.models.errors import (
    ConfigurationError,
    InvalidImageError,
    ModelStoreError,
    ModelStoreWriteError,
    RuntimeUnavailableError,
)

if TYPE_CHECKING:
    import keras

    from radlens.models.manifest import ModelManifest
    from radlens.models.registry import ModelRegistry

__all__ = [
    "OOD_FEATURES",
    "OPENVINO",
    "PRECISIONS",
    "RUNTIMES",
    "TENSORFLOW",
    "OpenVINORuntime",
    "Parity",
    "Selection",
    "Tolerance",
    "add_openvino_runtime",
    "bf16_supported",
    "convert_to_openvino",
    "cpu_name",
    "measure_findings_parity",
    "measure_parity",
    "openvino_version",
    "select_runtime",
]

log = logging.getLogger(__name__)

RuntimeName = Literal["tensorflow", "openvino"]
Precision = Literal["fp32", "bf16"]
TENSORFLOW: RuntimeName = "tensorflow"
OPENVINO: RuntimeName = "openvino"
RUNTIMES = ("auto", TENSORFLOW, OPENVINO)
PRECISIONS = ("auto", "fp32", "bf16")
IR_XML = "model.xml"
IR_BIN = "model.bin"
_OV_HINT = {"fp32": "f32", "bf16": "bf16"}
# The name of an IR's OOD features output: this, then "|layer" per layer the features pool
# (models.ood.feature_model); the name alone for a detector on the last convolutional layer.
OOD_FEATURES = "radlens_ood_features"
LATENCY_PROBES = 32  # images the latency model must score bit for bit as the streams model


# --- parity --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How far a converted model may drift from the Keras model and still be served by ``auto``.

    Defaults: validation AUC within 0.002 and under 1% of labels flipping at the threshold
    (the issue's figures: 2 of 624 flipped, AUC equal to five decimals).
    """

    max_auc_difference: float = 0.002
    max_flip_fraction: float = 0.01

    def __post_init__(self) -> None:
        for name in ("max_auc_difference", "max_flip_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"{name} must be within [0, 1]. Received: {value!r}")

    def allows(self, parity: Parity) -> bool:
        """True when ``parity`` is within both limits (an undefined AUC difference fails)."""
        return (
            parity.auc_difference is not None
            and parity.auc_difference <= self.max_auc_difference
            and parity.flip_fraction <= self.max_flip_fraction
        )


@dataclass(frozen=True)
class Parity:
    """How a candidate runtime's scores compare with the Keras model's on labelled images.

    Attributes:
        n: images compared.
        auc_reference, auc: AUC of the Keras model and of the candidate (binary: positive
            class score; multi-class: one-vs-rest macro), None when undefined (one class).
        auc_difference: ``|auc - auc_reference|``, None when undefined.
        max_score_difference: largest absolute difference of any class score.
        flips: images whose label differs at the threshold (binary) or argmax.
        flip_fraction: ``flips / n``.
        threshold: the decision threshold used (binary), or None (argmax).
        per_finding: multi-label findings models only (:func:`measure_findings_parity`), else
            None: ``{finding: {auc_reference, auc, auc_difference, max_score_difference,
            flips, threshold}}``. Then ``auc_reference``/``auc`` are the macro AUCs,
            ``auc_difference`` the LARGEST per-finding AUC difference, ``flips`` the
            (image, finding) decisions that differ at each finding's threshold and
            ``flip_fraction`` their share of all ``n x findings`` decisions.
    """

    n: int
    auc_reference: float | None
    auc: float | None
    auc_difference: float | None
    max_score_difference: float
    flips: int
    flip_fraction: float
    threshold: float | None
    per_finding: dict[str, dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.per_finding is None:  # single-label records keep their fields
            del data["per_finding"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Parity | None:
        """A recorded parity, or None when ``data`` is not one (e.g. not measured)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                **{f: data[f] for f in cls.__dataclass_fields__ if f != "per_finding"},
                per_finding=data.get("per_finding"),
            )
        except (KeyError, TypeError):
            return None

    def summary(self) -> str:
        auc = "n/a" if self.auc_difference is None else f"{self.auc_difference:.5f}"
        if self.per_finding is not None:
            decisions = self.n * len(self.per_finding)
            return (
                f"largest per-finding AUC difference {auc}, largest score difference "
                f"{self.max_score_difference:.5f}, {self.flips}/{decisions} (image, finding) "
                "decisions flipped"
            )
        return (
            f"AUC difference {auc}, largest score difference {self.max_score_difference:.5f}, "
            f"{self.flips}/{self.n} labels flipped"
        )


def _labels_at(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    if scores.shape[1] == 2:
        return (scores[:, 1] >= (0.5 if threshold is None else threshold)).astype(np.int64)
    return np.argmax(scores, axis=1)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    if scores.shape[1] == 2:
        return float(roc_auc_score(labels, scores[:, 1]))
    if len(np.unique(labels)) != scores.shape[1]:
        return None
    return float(roc_auc_score(labels, scores, multi_class="ovr", average="macro"))


def measure_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    threshold: float | None,
) -> Parity:
    """Compare two runtimes' scores on the same labelled images.

    Args:
        reference: ``(N, classes)`` scores of the Keras (TensorFlow fp32) model.
        candidate: ``(N, classes)`` scores of the converted runtime, same images and order.
        labels: ``(N,)`` or ``(N, 1)`` integer class indices.
        threshold: the positive-class threshold of a binary model (None: 0.5); ignored for
            more classes (argmax).

    Raises:
        ValueError: shapes that do not match, an empty set, or non-finite scores (quoted).
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if ref.ndim != 2 or ref.shape != cand.shape or ref.shape[0] != y.shape[0] or not len(y):
        raise ValueError(
            "reference and candidate must be (N, classes) scores for the same N >= 1 labels. "
            f"Received shapes {ref.shape}, {cand.shape} and {y.shape}"
        )
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(cand))):
        raise ValueError("scores must be finite. Received NaN or infinite scores")
    auc_ref, auc = _auc(y, ref), _auc(y, cand)
    flips = int(np.sum(_labels_at(ref, threshold) != _labels_at(cand, threshold)))
    return Parity(
        n=len(y),
        auc_reference=auc_ref,
        auc=auc,
        auc_difference=None if auc is None or auc_ref is None else abs(auc - auc_ref),
        max_score_difference=float(np.max(np.abs(ref - cand))),
        flips=flips,
        flip_fraction=flips / len(y),
        threshold=threshold if ref.shape[1] == 2 else None,
    )


def measure_findings_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    targets: np.ndarray,
    thresholds: dict[str, float],
) -> Parity:
    """:func:`measure_parity` for a multi-label findings model (one sigmoid per finding).

    Per finding: the ROC AUC of either runtime (None where the images hold one class of that
    finding), their difference, the largest score difference and the images whose decision
    flips at that finding's threshold. Overall (what :class:`Tolerance` judges): the largest
    per-finding AUC difference (None when no finding has one), the largest score difference,
    and the (image, finding) decisions that flip over all ``N x findings`` of them.

    Args:
        reference, candidate: ``(N, findings)`` sigmoid scores, same images and order.
        targets: ``(N, findings)`` multi-hot labels.
        thresholds: the manifest's ``findings.thresholds``, one per finding in column order.

    Raises:
        ValueError: shapes that do not match, thresholds for other findings than the columns,
            an empty set or non-finite scores.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    y = np.asarray(targets).astype(np.int64)
    names = list(thresholds)
    if (
        ref.ndim != 2
        or ref.shape != cand.shape
        or ref.shape != y.shape
        or not len(y)
        or ref.shape[1] != len(names)
    ):
        raise ValueError(
            "reference, candidate and targets must be (N, findings) for the same N >= 1, with "
            f"one threshold per finding. Received shapes {ref.shape}, {cand.shape}, {y.shape} "
            f"and {len(names)} threshold(s)"
        )
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(cand))):
        raise ValueError("scores must be finite. Received NaN or infinite scores")
    per: dict[str, dict[str, Any]] = {}
    flips = 0
    for j, name in enumerate(names):
        cut = float(thresholds[name])
        column = np.stack([1.0 - ref[:, j], ref[:, j]], axis=1)
        auc_ref = _auc(y[:, j], column)
        auc = _auc(y[:, j], np.stack([1.0 - cand[:, j], cand[:, j]], axis=1))
        flipped = int(np.sum((ref[:, j] >= cut) != (cand[:, j] >= cut)))
        flips += flipped
        per[name] = {
            "auc_reference": auc_ref,
            "auc": auc,
            "auc_difference": None if auc is None or auc_ref is None else abs(auc - auc_ref),
            "max_score_difference": float(np.max(np.abs(ref[:, j] - cand[:, j]))),
            "flips": flipped,
            "threshold": cut,
        }
    differences = [v["auc_difference"] for v in per.values() if v["auc_difference"] is not None]
    references = [v["auc_reference"] for v in per.values() if v["auc_reference"] is not None]
    candidates = [v["auc"] for v in per.values() if v["auc"] is not None]
    return Parity(
        n=len(y),
        auc_reference=float(np.mean(references)) if references else None,
        auc=float(np.mean(candidates)) if candidates else None,
        auc_difference=max(differences) if differences else None,
        max_score_difference=float(np.max(np.abs(ref - cand))),
        flips=flips,
        flip_fraction=flips / y.size,
        threshold=None,
        per_finding=per,
    )


# --- the CPU and the package ---------------------------------------------------------------


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None when it is absent (read without importing)."""
    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def _core() -> Any:
    """The process's one OpenVINO ``Core``, made on first use and kept until the process ends.

    OpenVINO recommends one Core per application. Here it is also what keeps signals working:
    the CPU plugin each Core loads swaps the calling thread's alternate signal stack for a
    mapping of its own, and unmaps that mapping when the plugin goes, restoring the previous
    stack only if its own is still the current one. With two Cores whose lifetimes overlap
    (load one model, then a second, drop the first, then the second) the thread is left with
    an unmapped stack, and the next signal handled on it (CPython installs its handlers with
    ``SA_ONSTACK``: uvicorn's SIGTERM and SIGINT, pytest-timeout's SIGALRM) kills the process
    with SIGSEGV instead of running the handler. One Core for the life of the process never
    unmaps its stack (tests/models/test_runtime.py, the SIGTERM test).
    """
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


def bf16_supported(core: Any = None) -> bool:
    """True when OpenVINO's CPU device lists ``BF16`` in its OPTIMIZATION_CAPABILITIES
    (AMX or AVX-512 BF16); False when it does not or OpenVINO is absent."""
    if core is None:
        if openvino_version() is None:
            return False
        core = _core()
    return "BF16" in list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cpu_name(core: Any = None) -> str:
    """The CPU model as OpenVINO reports it (``FULL_DEVICE_NAME``), or ``"unknown"``."""
    try:
        core = core if core is not None else _core()
        return str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:  # OpenVINO absent or the property unavailable: only a label
        return "unknown"


# --- conversion and loading ----------------------------------------------------------------


def ood_features_name(layers: Sequence[str] | None) -> str:
    """The IR output name of the OOD features pooled from ``layers`` (None: the last
    convolutional layer, :func:`models.ood.feature_model`)."""
    return "|".join([OOD_FEATURES, *(layers or ())])


def _ood_features_layers(name: str) -> tuple[str, ...] | None:
    parts = name.split("|")
    return tuple(parts[1:]) or None


def _features_output(model: Any) -> tuple[int, tuple[str, ...] | None, int] | None:
    """The first output of an OpenVINO model named :data:`OOD_FEATURES` (``|layer`` ...): its
    index, the layers it pools (None: the last convolutional layer) and its width; None for
    an IR without one (converted before the version had an OOD detector)."""
    for i, output in enumerate(model.outputs):
        names = [n for n in output.get_names() if n.split("|")[0] == OOD_FEATURES]
        if names:
            width = int(output.get_partial_shape()[-1].get_length())
            return i, _ood_features_layers(names[0]), width
    return None


def ir_has_ood_features(xml_path: Path, layers: Sequence[str] | None, dimension: int) -> bool:
    """True when the IR at ``xml_path`` returns the features an OOD detector on ``layers``
    (None: the last convolutional layer) of width ``dimension`` scores, as
    :meth:`OpenVINORuntime.has_ood_features` says of a loaded one; read, not compiled. False
    means OpenVINO serving takes the detector's features from a second (Keras) forward pass
    until the version is converted again (``radlens models convert``)."""
    found = _features_output(_core().read_model(str(xml_path)))
    wanted = None if layers is None else tuple(layers)
    return found is not None and found[1] == wanted and found[2] == dimension


def convert_to_openvino(
    model: keras.Model,
    out_dir: Path,
    *,
    ood_features: bool = False,
    ood_layers: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Convert a Keras model to OpenVINO IR in ``out_dir`` (``model.xml`` + ``model.bin``).

    Weights stay fp32 in the IR (``compress_to_fp16=False``); the precision is chosen when
    the model is compiled.

    With ``ood_features`` the IR is :func:`models.ood.feature_model` of ``model`` and
    ``ood_layers`` (the OOD detector's ``layers``): output 0 the class scores as before,
    output 1 the features the detector scores, named :func:`ood_features_name` so that
    :class:`OpenVINORuntime` knows which layers they pool.

    Raises:
        RuntimeUnavailableError: OpenVINO is not installed.
        ModelStoreError: the conversion failed (the message quotes OpenVINO's reason).
        ConfigurationError: ``ood_layers`` the model lacks (models.ood.resolve_layers).
    """
    if openvino_version() is None:
        raise RuntimeUnavailableError(
            "the openvino package is not installed (pip install openvino)"
        )
    import openvino as ov

    source = model
    if ood_features:
        from radlens.models.ood import feature_model

        source = feature_model(model, ood_layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # Keras warns that the converter passes the input as a tuple; harmless.
            warnings.simplefilter("ignore", UserWarning)
            converted = ov.convert_model(source)
        if ood_features:
            widths = [int(out.get_partial_shape()[-1].get_length()) for out in converted.outputs]
            expected = [int(t.shape[-1]) for t in source.outputs]
            if widths != expected:  # the converter must keep [scores, features] in order
                raise ValueError(f"outputs of widths {widths}, expected {expected}")
            converted.outputs[1].get_tensor().set_names({ood_features_name(ood_layers)})
    except Exception as exc:  # the converter raises many types
        raise ModelStoreError(
            f"OpenVINO could not convert the model: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}"
        ) from exc
    try:
        ov.save_model(converted, str(out_dir / IR_XML), compress_to_fp16=False)
    except Exception as exc:
        # OpenVINO's C++ writer says only "basic_ios::clear: iostream error" on a full disk
        # (QA round 33): say where it wrote and how much room there is
        import shutil

        free = shutil.disk_usage(out_dir).free
        raise ModelStoreWriteError(
            f"writing the OpenVINO files to {out_dir} failed ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); {free / 2**20:.0f} MiB are free on that file "
            "system: free space there, then run the command again"
        ) from exc
    return {IR_XML: out_dir / IR_XML, IR_BIN: out_dir / IR_BIN}


class OpenVINORuntime:
    """A converted model compiled for the CPU at one precision.

    ``predict`` is thread-safe: each calling thread gets its own infer request on the one
    compiled model (the service runs several inference streams).

    Args:
        xml_path: the IR's ``model.xml`` (``model.bin`` beside it).
        precision: ``"fp32"`` or ``"bf16"`` (``INFERENCE_PRECISION_HINT``).
        input_shape: ``(H, W, C)`` the model takes, for a clear error on a bad batch.
        streams: calls that may run at once (the service's RADLENS_INFERENCE_STREAMS). 1:
            OpenVINO's latency mode, one call uses every core. More: ``NUM_STREAMS`` of them,
            the cores split between them, so concurrent calls do not fight over the same
            threads (on a busy 2-core machine one call spread over both cores stalls
            whenever either core is taken; docs/benchmarks/serve.md, "Runtimes").
        latency: with ``streams`` > 1, also compile the same IR at the same precision with
            OpenVINO's ``LATENCY`` performance hint (one stream over every core), for
            ``predict(batch, alone=True)``: a lone request then runs on all the cores instead
            of one stream's share. It is kept only when its scores are the streams model's bit
            for bit on :data:`LATENCY_PROBES` seeded images at batch 1 (the only size it
            serves): in bf16 they were on every image tried, in fp32 one image in six differed
            in the last bit (threads split a reduction), and such a model is dropped with a
            warning (``latency_note`` says why). It costs one more compiled model's memory.

    Raises:
        RuntimeUnavailableError: OpenVINO is absent.
        ModelCorruptError: OpenVINO cannot read or compile the files.
    """

    name: RuntimeName = "openvino"

    def __init__(
        self,
        xml_path: Path,
        precision: Precision,
        input_shape: tuple[int, ...],
        *,
        streams: int = 1,
        latency: bool = False,
    ) -> None:
        from radlens.models.errors import ModelCorruptError

        if precision not in _OV_HINT:
            raise ConfigurationError(f"precision must be fp32 or bf16. Received: {precision!r}")
        if openvino_version() is None:
            raise RuntimeUnavailableError(
                "the openvino package is not installed (pip install openvino)"
            )
        if not 1 <= streams <= 64:
            raise ConfigurationError(f"streams must be within 1..64. Received: {streams!r}")
        self.precision: Precision = precision
        self.streams = streams
        self.input_shape = tuple(int(d) for d in input_shape)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_HINT[precision]}
        if streams > 1:
            config["NUM_STREAMS"] = streams
        core = _core()
        # The latency model: the same IR and precision, one stream over every core.
        self.latency_compiled: Any = None
        try:
            model = core.read_model(str(xml_path))
            self._find_outputs(model)
            self.compiled = core.compile_model(model, "CPU", config)
            if latency and streams > 1:
                self.latency_compiled = core.compile_model(
                    model,
                    "CPU",
                    {
                        "INFERENCE_PRECISION_HINT": _OV_HINT[precision],
                        "PERFORMANCE_HINT": "LATENCY",
                    },
                )
        except Exception as exc:  # OpenVINO raises RuntimeError with the parser's reason
            raise ModelCorruptError(
                f"OpenVINO could not load {xml_path}: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]}"
            ) from exc
        self._local = threading.local()
        self.latency_note = ""
        if self.latency_compiled is not None:
            differ = self._latency_model_differs()
            if differ:
                self.latency_compiled = None
                self.latency_note = (
                    f"the latency model's scores differed from the streams model's in "
                    f"{differ} of {LATENCY_PROBES} probe images; every call runs on the streams"
                )
                log.warning("OpenVINO %s: %s", precision, self.latency_note)

    def _find_outputs(self, model: Any) -> None:
        """Which output holds the class scores and which, if any, the OOD features
        (:func:`convert_to_openvino` with ``ood_features``; an IR converted before has the
        scores alone)."""
        self.scores_index = 0
        self.features_index: int | None = None
        self.feature_layers: tuple[str, ...] | None = None
        self.feature_width = 0
        found = _features_output(model)
        if found is not None:
            self.features_index, self.feature_layers, self.feature_width = found
        if self.features_index is not None:
            others = [i for i in range(len(model.outputs)) if i != self.features_index]
            if len(others) != 1:
                raise ValueError(
                    f"an IR with OOD features needs one scores output; it has {len(others)}"
                )
            self.scores_index = others[0]

    def has_ood_features(self, layers: Sequence[str] | None, dimension: int) -> bool:
        """True when the IR returns the OOD features a detector on ``layers`` (None: the last
        convolutional layer) of width ``dimension`` scores."""
        wanted = None if layers is None else tuple(layers)
        return (
            self.features_index is not None
            and self.feature_layers == wanted
            and self.feature_width == dimension
        )

    def _latency_model_differs(self) -> int:
        """How many of the seeded probe images (batch 1) the two compiled models score
        differently in any bit."""
        rng = np.random.default_rng(0)
        probes = rng.random((LATENCY_PROBES, 1, *self.input_shape), dtype=np.float32)
        return sum(not np.array_equal(self.predict(x), self.predict(x, alone=True)) for x in probes)

    @property
    def latency(self) -> bool:
        """True when a latency model is compiled (``predict(batch, alone=True)`` uses it)."""
        return self.latency_compiled is not None

    def predict(self, batch: np.ndarray, *, alone: bool = False) -> np.ndarray:
        """``(N, H, W, C)`` float images -> float32 ``(N, classes)`` scores (one call).

        ``alone``: no other call runs meanwhile, so run on the latency model (every core)
        when one is compiled; the same scores either way.
        """
        return self.predict_with_features(batch, alone=alone)[0]

    def predict_with_features(
        self, batch: np.ndarray, *, alone: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """As :meth:`predict`, and the OOD features ``(N, D)`` of the same call (None when
        the IR has no features output)."""
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"batch must be a numpy array. Received: {type(batch).__name__}")
        if batch.ndim != 4 or batch.shape[0] == 0 or tuple(batch.shape[1:]) != self.input_shape:
            raise InvalidImageError(
                f"expected a batch of shape (N, {', '.join(map(str, self.input_shape))}) for "
                f"this model. Received shape {batch.shape}"
            )
        compiled = self.compiled
        if alone and self.latency_compiled is not None:
            compiled = self.latency_compiled
        key = "latency_request" if compiled is self.latency_compiled else "request"
        request = getattr(self._local, key, None)
        if request is None:
            request = compiled.create_infer_request()
            setattr(self._local, key, request)
        result = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        scores = np.array(result[compiled.output(self.scores_index)], dtype=np.float32)
        if self.features_index is None:
            return scores, None
        features = np.array(result[compiled.output(self.features_index)], dtype=np.float32)
        return scores, features


# --- selection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which runtime and precision serve, and why.

    Attributes:
        runtime: ``"tensorflow"`` or ``"openvino"``.
        precision: ``"fp32"`` or ``"bf16"``.
        reason: one line for the start-up log and ``/readyz``.
        fallback: True when ``auto`` fell back from what it would have preferred.
        parity: the recorded parity of the chosen OpenVINO precision, if any.
    """

    runtime: RuntimeName
    precision: Precision
    reason: str
    fallback: bool = False
    parity: Parity | None = None


def recorded_parity(manifest: ModelManifest, precision: Precision) -> Parity | None:
    """The parity recorded for ``precision`` in the manifest's OpenVINO entry, if any."""
    entry = manifest.runtimes.get(OPENVINO) or {}
    return Parity.from_dict((entry.get("parity") or {}).get(precision))


def select_runtime(
    *,
    runtime: str,
    precision: str,
    device_kind: str,
    openvino_problem: str | None,
    bf16: bool,
    parity: dict[str, Parity | None],
    tolerance: Tolerance,
) -> Selection:
    """The runtime rule, pure: what to serve with, given the settings and the facts.

    Args:
        runtime: ``RADLENS_RUNTIME``: ``auto``, ``tensorflow`` or ``openvino``.
        precision: ``RADLENS_PRECISION``: ``auto``, ``fp32`` or ``bf16``.
        device_kind: ``"gpu"`` or ``"cpu"`` (the GPU keeps TensorFlow under ``auto``).
        openvino_problem: why OpenVINO cannot serve this model (package absent, no
            converted files, a file missing or altered), or None when it can.
        bf16: the CPU supports bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES).
        parity: recorded parity per precision (``"fp32"``, ``"bf16"``), None if not measured.
        tolerance: the limits a recorded parity must be within.

    Rules: ``tensorflow`` serves TensorFlow fp32 (bf16 there is a configuration error).
    ``openvino`` needs a usable converted model; ``bf16`` (explicit) also needs CPU support
    and a recorded bf16 parity within tolerance, else it is refused. ``auto`` precision on
    OpenVINO: bf16 when all of that holds, else fp32. ``auto`` runtime: TensorFlow on a GPU;
    on a CPU, OpenVINO when it is usable and the chosen precision's recorded parity is within
    tolerance, else TensorFlow fp32 (``fallback=True`` with the reason) -- unless bf16 was
    asked for explicitly, which is refused rather than silently served in fp32.

    Raises:
        ConfigurationError: an unknown setting, or ``tensorflow`` with ``bf16``.
        RuntimeUnavailableError: an explicit setting that cannot be honoured (the reason).
    """
    if runtime not in RUNTIMES:
        raise ConfigurationError(
            f"RADLENS_RUNTIME must be one of {RUNTIMES}. Received: {runtime!r}"
        )
    if precision not in PRECISIONS:
        raise ConfigurationError(
            f"RADLENS_PRECISION must be one of {PRECISIONS}. Received: {precision!r}"
        )
    if runtime == TENSORFLOW:
        if precision == "bf16":
            raise ConfigurationError(
                "RADLENS_PRECISION=bf16 is served by OpenVINO; use RADLENS_RUNTIME=openvino or "
                "auto. Received: RADLENS_RUNTIME=tensorflow"
            )
        return Selection(TENSORFLOW, "fp32", "RADLENS_RUNTIME=tensorflow")

    def bf16_problem() -> str | None:
        if not bf16:
            return "this CPU has no bf16 support (OpenVINO OPTIMIZATION_CAPABILITIES)"
        found = parity.get("bf16")
        if found is None:
            return "no bf16 parity is recorded for this model (convert it with --data)"
        if not tolerance.allows(found):
            return (
                f"the recorded bf16 parity ({found.summary()}) is outside the tolerance (AUC "
                f"within {tolerance.max_auc_difference}, flips at most "
                f"{tolerance.max_flip_fraction:.2%})"
            )
        return None

    if runtime == "auto" and device_kind == "gpu":
        if precision == "bf16":
            raise RuntimeUnavailableError(
                "RADLENS_PRECISION=bf16 runs on the CPU with OpenVINO, but a GPU is in use and "
                "the GPU keeps TensorFlow; set RADLENS_PRECISION=auto or RADLENS_DEVICE=cpu"
            )
        return Selection(TENSORFLOW, "fp32", "a GPU is in use: the GPU keeps TensorFlow")

    if openvino_problem is not None:
        if runtime == OPENVINO or precision == "bf16":
            raise RuntimeUnavailableError(openvino_problem)
        return Selection(
            TENSORFLOW, "fp32", f"auto: OpenVINO not used: {openvino_problem}", fallback=True
        )

    chosen: Precision
    notes: list[str] = []
    if precision == "bf16":
        problem = bf16_problem()
        if problem is not None:
            raise RuntimeUnavailableError(f"RADLENS_PRECISION=bf16 cannot be served: {problem}")
        chosen = "bf16"
    elif precision == "fp32":
        chosen = "fp32"
    else:
        problem = bf16_problem()
        chosen = "fp32" if problem else "bf16"
        if problem:
            notes.append(f"fp32 because {problem}")
    found = parity.get(chosen)
    if runtime == "auto" and (found is None or not tolerance.allows(found)):
        why = (
            f"no {chosen} parity is recorded for this model"
            if found is None
            else f"the recorded {chosen} parity ({found.summary()}) is outside the tolerance"
        )
        return Selection(TENSORFLOW, "fp32", f"auto: OpenVINO not used: {why}", fallback=True)
    reason = f"RADLENS_RUNTIME={runtime}, RADLENS_PRECISION={precision}"
    if notes:
        reason += f" ({'; '.join(notes)})"
    return Selection(OPENVINO, chosen, reason, parity=found)


# --- converting a stored model -------------------------------------------------------------


def _scores_in_batches(predict: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )


def add_openvino_runtime(
    registry: ModelRegistry,
    ref: str,
    *,
    model: keras.Model | None = None,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    data_note: str = "",
    batch_size: int = 32,
) -> ModelManifest:
    """Convert a stored model to OpenVINO IR, measure parity, and attach both to its version.

    A version with an OOD detector is converted with the features that detector reads as a
    second output (:func:`convert_to_openvino`, ``ood_features``): served with OpenVINO, one
    call then gives the scores and the detector's input. A detector attached after the
    conversion is served from the Keras model's features (a second forward pass) until the
    version is converted again.

    Args:
        registry: the store.
        ref: ``name:version`` (or ``name``: its newest version).
        model: the Keras model if already loaded (training export); else it is loaded.
        images: ``(N, H, W, 1)`` float32 model inputs for parity (the validation split), or
            None to convert without parity (then ``auto`` will not serve OpenVINO).
        labels: ``(N,)`` class indices for ``images``; for a multi-label findings model
            ``(N, findings)`` multi-hot targets (parity by :func:`measure_findings_parity`
            at the manifest's per-finding thresholds).
        data_note: where the images came from, recorded with the parity.
        batch_size: images per model call while measuring.

    Returns:
        The updated manifest (same name, version and ``model_sha256``; new ``runtimes``).

    Raises:
        RuntimeUnavailableError: OpenVINO is absent.
        ModelStoreError and subclasses: the stored version fails its checks, or conversion
            failed. Nothing in the store changes on any error.
        ValueError: images and labels that do not fit (quoted).
    """
    from radlens.models.manifest import utc_now_iso
    from radlens.models.registry import predict_scores

    version = openvino_version()
    if version is None:
        raise RuntimeUnavailableError(
            "the openvino package is not installed (pip install openvino)"
        )
    if (images is None) != (labels is None):
        raise ValueError("give both images and labels for parity, or neither")
    loaded = registry.load(ref) if model is None else None
    manifest = registry.verify(*registry.resolve(ref)) if loaded is None else loaded.manifest
    keras_model = model if model is not None else loaded.model  # type: ignore[union-attr]
    # A version with an OOD detector: the IR returns its features too (one call serves both)
    detector_file = registry.ood_detector_file(manifest)
    ood_layers = None
    if detector_file is not None:
        from radlens.models.ood import load_detector

        ood_layers = load_detector(detector_file).layers
    staged = registry.staging_dir(manifest.name)
    try:
        files = (
            convert_to_openvino(keras_model, staged)
            if detector_file is None
            else convert_to_openvino(keras_model, staged, ood_features=True, ood_layers=ood_layers)
        )
        core = _core()
        has_bf16 = bf16_supported(core)
        parity: dict[str, Any] = {"fp32": None, "bf16": None}
        if images is not None and labels is not None:
            batch = np.asarray(images, dtype=np.float32)
            targets = np.asarray(labels)
            count = len(targets) if manifest.multi_label else len(targets.reshape(-1))
            if batch.ndim != 4 or len(batch) != count:
                raise ValueError(
                    f"images must be (N, H, W, C) with one label each. Received images "
                    f"{batch.shape} and labels {targets.shape}"
                )
            reference = _scores_in_batches(
                lambda b: predict_scores(keras_model, b), batch, batch_size
            )
            for precision in ("fp32", "bf16"):
                if precision == "bf16" and not has_bf16:
                    continue  # the hint would run fp32 here: nothing to learn
                runtime = OpenVINORuntime(files[IR_XML], precision, tuple(batch.shape[1:]))
                candidate = _scores_in_batches(runtime.predict, batch, batch_size)
                measured = (
                    measure_findings_parity(
                        reference, candidate, targets, dict(manifest.finding_thresholds)
                    )
                    if manifest.multi_label
                    else measure_parity(reference, candidate, targets, manifest.threshold)
                )
                parity[precision] = {**measured.to_dict(), "data": data_note}
                log.info("%s parity of %s: %s", precision, manifest.ref, measured.summary())
        entry = {
            "format": "openvino-ir",
            "openvino_version": version,
            "converted_at": utc_now_iso(),
            "cpu": cpu_name(core),
            "cpu_bf16": has_bf16,
            "parity": parity,
        }
        return registry.add_runtime(manifest.ref, OPENVINO, staged, entry)
    finally:
        registry.remove_staging(staged)  # renamed into the version, or what is left of it
