"""The loaded model on its device, fed by micro-batching worker threads ("streams").

``Predictor.predict()`` is called from request handlers on the event loop. It puts the image
and a future on a queue and awaits the future; a worker thread takes items off the queue,
makes a batch, runs ONE model call per batch and resolves the futures back on their event loop
with ``loop.call_soon_threadsafe``. The event loop never runs the model. With ``streams`` > 1
there are that many worker threads: one collects a batch at a time, and their model calls may
run at once (why, and the measured effect on a 2-core CPU: docs/benchmarks/serve.md).
``predict_prepared()`` lets the stream also build the model input (decode and preprocess an
upload) just before its model call. The queue is bounded (app/workqueue.py): a full one
refuses a request at once (503) rather than holding it.

Batching policy (why it looks like this):
- With one stream, the batch deadline is counted from the moment the *first* item was queued,
  not from when the worker picked it up. Under load, items queue while the previous batch
  runs, their deadline has passed by the time the worker is free, so the worker takes what is
  queued and runs at once ("natural" batching: no added latency, batch size grows with load).
  With several streams it is counted from when the stream starts collecting: meanwhile the
  other streams' model calls keep the cores busy, so a fuller batch costs no throughput.
- The worker only waits for more items when waiting can help, that is
  when there are other clients: recent batches saw more than one request (their size plus what
  queued up while they ran, as a moving average), and requests recently arrived closer together
  than the wait. A lone client sends its next request only after it got the previous answer:
  every batch has one request and nothing queues behind it, so it is never delayed.
- It never waits when the batch is already full.

A lone request (one item in the batch, nothing else queued, no other stream in a model call)
may run on the runtime's latency model when it has one (OpenVINO compiled a second time with
the LATENCY hint: one call over every core; ``RADLENS_LATENCY_MODEL``): with several streams
each call otherwise gets one stream's share of the cores. Same IR, same precision, the same
scores bit for bit. Which of the two is faster depends on the machine: on a quiet CPU one call
over every core is, on a busy shared one it stalls whenever any core is taken and is slower
(docs/benchmarks/serve.md, round 8). So ``auto`` times both (:class:`LoneCallChooser`: seeded
at warm-up, then a moving average of each one's lone calls, the other one tried every 16th)
and runs a lone request on the faster; ``on`` always takes the latency model.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from fastapi.concurrency import run_in_threadpool

from radlens.app.device import DeviceInfo, select_device
from radlens.app.errors import AppError
from radlens.app.workqueue import STOP, WorkQueue, fail, resolve_all
from radlens.models.decision import (
    OperatingPoint,
    finding_points_not_computed,
    operating_point,
    serve_at,
)
from radlens.models.errors import InvalidImageError, ModelCorruptError, RadlensError
from radlens.models.runtime import OpenVINORuntime, Selection

if TYPE_CHECKING:
    from radlens.models.ood import EnsembleOodDetector, OodDetector
    from radlens.models.registry import LoadedModel, ModelManifest

log = logging.getLogger(__name__)

InferenceMode = Literal["function", "predict_on_batch"]
ModelRuntime = OpenVINORuntime  # anything with predict(batch) -> (N, classes) scores
MAX_STREAMS = 8


class PredictorUnavailableError(AppError):
    """The predictor is stopped or stopping (service shutting down)."""

    code = "predictor-unavailable"
    title = "The model is not accepting requests (the service is stopping); retry shortly"
    status_code = 503


class InferenceError(AppError):
    """The model call for a batch failed; every request in that batch gets this error."""

    code = "inference-failed"
    title = "The model failed to run on this request's batch; retry the request"
    status_code = 500


@dataclass(frozen=True)
class PredictionOutput:
    scores: np.ndarray  # (classes,) float32
    label: str
    inference_ms: float  # model time of the batch this image was in
    batch_size: int
    prepared: Any = None  # what the request's prepare() handed back (predict_prepared)
    ood_score: float | None = None  # the model's OOD detector's score (None: no detector)


@dataclass(frozen=True)
class BatchStats:
    """What the worker did for one batch (for metrics and tests)."""

    size: int
    inference_ms: float
    fill_wait_ms: float  # time the worker spent waiting for more items after the first
    queue_ms: float  # time the oldest item spent queued before its model call started
    waited: bool  # whether the worker waited for more items at all
    ok: bool
    alone: bool = False  # a lone request run on the runtime's latency model (every core)


BatchObserver = Callable[[BatchStats], None]


@dataclass
class _Item:
    array: np.ndarray | None  # None until prepare() has run
    future: asyncio.Future[PredictionOutput]
    loop: asyncio.AbstractEventLoop
    queued_at: float
    prepare: Prepare | None = None
    prepared: Any = None


Prepare = Callable[[], tuple[np.ndarray, Any]]
"""A request's own preparation: () -> (model input, anything to hand back with the result)."""


MAX_QUEUED = 256  # uploads waiting for a model call at most (RADLENS_MAX_QUEUED_PREDICTIONS)

LatencyPolicy = Literal["auto", "on"]


class LoneCallChooser:
    """Which compiled model a lone request runs on, by measured time: the latency model
    (True) or the streams model (False).

    Keeps a moving average (weight ``alpha`` for the newest) of each one's lone-call wall time
    and picks the faster; each option is tried until it has a time, and every
    ``explore_every``-th choice is the other one, so a change of the machine's load is noticed.
    Not thread-safe: the predictor calls it under its lock.

    Example:
        >>> chooser = LoneCallChooser(explore_every=4)
        >>> chooser.choose(), chooser.record(True, 9.0), chooser.choose()
        (True, None, False)
        >>> chooser.record(False, 16.0)
        >>> [chooser.choose() for _ in range(4)]  # the faster, and every 4th the other
        [True, False, True, True]
    """

    def __init__(self, explore_every: int = 16, alpha: float = 0.3) -> None:
        if explore_every < 2 or not 0.0 < alpha <= 1.0:
            raise ValueError(
                f"explore_every must be >= 2 and alpha in (0, 1]. Received: {explore_every!r}, "
                f"{alpha!r}"
            )
        self.explore_every = explore_every
        self.alpha = alpha
        self.ms: dict[bool, float | None] = {True: None, False: None}
        self.choices = 0

    def choose(self) -> bool:
        """True: run this lone call on the latency model."""
        self.choices += 1
        latency, streams = self.ms[True], self.ms[False]
        if latency is None:
            return True
        if streams is None:
            return False
        faster = latency <= streams
        return (not faster) if self.choices % self.explore_every == 0 else faster

    def record(self, latency: bool, ms: float) -> None:
        """A lone call's wall time on the latency (True) or the streams model."""
        old = self.ms[latency]
        self.ms[latency] = ms if old is None else (1.0 - self.alpha) * old + self.alpha * ms


def _error_summary(exc: BaseException, limit: int = 300) -> str:
    """The message of an exception without the graph traceback TensorFlow puts into it."""
    noise = ("File ", "Graph execution error", "Detected at node", "[[", "[Op:")
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not line.startswith(noise)]
    text = " ".join(" ".join(kept or lines).split())
    return text[:limit] or type(exc).__name__


BatchTuning = Literal["auto", "off"]
TUNING_ROUNDS = 3
TUNING_TOLERANCE = 0.01  # a smaller batch within 1% of the best per-image time wins (latency)


def batch_size_candidates(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch_size``, then ``max_batch_size`` itself."""
    sizes = []
    n = 1
    while n < max_batch_size:
        sizes.append(n)
        n *= 2
    sizes.append(max_batch_size)
    return sizes


def choose_batch_limit(ms_per_image: dict[int, float], tolerance: float = TUNING_TOLERANCE) -> int:
    """The smallest batch size whose time per image is within ``tolerance`` of the best.

    Example:
        >>> choose_batch_limit({1: 9.0, 2: 6.0, 4: 5.0, 8: 4.1, 16: 4.5})
        8
        >>> choose_batch_limit({1: 9.0, 2: 6.0, 4: 4.03, 8: 4.0})   # 4 is within 1%
        4
    """
    if not ms_per_image:
        raise ValueError("no batch timings to choose from")
    fastest = min(ms_per_image.values())
    return min(n for n, ms in ms_per_image.items() if ms <= fastest * (1.0 + tolerance))


class Predictor:
    """A loaded model on a device, with a micro-batching worker thread.

    ``observers`` are called on the worker thread with a ``BatchStats`` after every batch (the
    service feeds its batch-size and latency metrics from them).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: DeviceInfo,
        *,
        max_batch_size: int,
        max_batch_wait_ms: float,
        inference: InferenceMode = "function",
        observers: Sequence[BatchObserver] = (),
        batch_tuning: BatchTuning = "off",
        streams: int = 1,
        max_queued: int = MAX_QUEUED,
        runtime: ModelRuntime | None = None,
        selection: Selection | None = None,
        operating_point_name: str | None = None,
        ood: OodDetector | EnsembleOodDetector | None = None,
        latency_policy: LatencyPolicy = "auto",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size should be >= 1. Received: {max_batch_size!r}")
        if not (max_batch_wait_ms >= 0 and math.isfinite(max_batch_wait_ms)):
            raise ValueError(
                f"max_batch_wait_ms should be a finite number >= 0. Received: {max_batch_wait_ms!r}"
            )
        if not 1 <= streams <= MAX_STREAMS:
            raise ValueError(
                f"streams should be between 1 and {MAX_STREAMS}. Received: streams={streams!r}"
            )
        if batch_tuning not in ("auto", "off"):
            raise ValueError(
                f"batch_tuning should be 'auto' or 'off'. Received: batch_tuning={batch_tuning!r}"
            )
        if inference not in ("function", "predict_on_batch"):
            raise ValueError(
                "inference should be 'function' or 'predict_on_batch'. "
                f"Received: inference={inference!r}"
            )
        self.loaded = loaded
        self.model = loaded.model
        # A converted runtime (OpenVINO) runs the batches when given; the Keras model stays
        # loaded for Grad-CAM, which needs gradients.
        self.runtime = runtime
        self.selection: Selection = selection or Selection("tensorflow", "fp32", "default")
        # which of the manifest's operating points decides the label (RADLENS_OPERATING_POINT)
        self.operating_point: OperatingPoint = operating_point(
            loaded.manifest, operating_point_name
        )
        # a multi-label model at a named point: the manifest every decision is taken with
        # carries each finding's threshold at that point (models.decision.serve_at), so the
        # stored findings (prediction_findings.threshold) hold the thresholds actually used
        self.manifest: ModelManifest = serve_at(loaded.manifest, self.operating_point)
        _log_finding_point(self.manifest, self.operating_point)
        # The OOD detector (models/ood.py) scores the penultimate features of every batch:
        # the model then runs as [scores, features] in the same call (app/gate.py). With
        # OpenVINO the features come from the same IR call when it was converted with them
        # (models.runtime.convert_to_openvino): only the detector runs in TensorFlow then.
        # An IR converted before (the scores alone) or for other layers: the Keras model
        # gives the features in a second forward pass, as before.
        self.ood = ood
        self._ood_model = None
        check = getattr(runtime, "has_ood_features", None)
        self.ood_from_runtime = bool(
            ood is not None and check is not None and check(ood.layers, ood.dimension)
        )
        if ood is not None and runtime is not None and not self.ood_from_runtime:
            log.info(
                "the OpenVINO model of %s does not return the OOD detector's features: they "
                "come from the Keras model in a second forward pass per batch (convert the "
                "version again, `radlens models convert`, to take them from one call)",
                loaded.manifest.ref,
            )
        if ood is not None and not self.ood_from_runtime:
            from radlens.models.ood import feature_model

            self._ood_model = feature_model(loaded.model, ood.layers)
            width = self._ood_model.outputs[1].shape[-1]
            if ood.dimension != width:  # e.g. another model's detector copied in and sealed
                raise ModelCorruptError(
                    f"the OOD detector of {loaded.manifest.ref} was fitted on "
                    f"{ood.dimension}-d features; the model's are {width}-d"
                )
        self.device = device
        self.max_batch_size = int(max_batch_size)
        # The largest batch the worker builds: max_batch_size, or with batch_tuning="auto" the
        # most efficient size measured at warm-up (see tune_batch_limit).
        self.batch_limit = self.max_batch_size
        self.batch_tuning: BatchTuning = batch_tuning
        self.batch_timings: dict[int, float] = {}  # warm-up: ms per image by batch size
        self.max_batch_wait_ms = float(max_batch_wait_ms)
        self.inference = inference
        self.observers: list[BatchObserver] = list(observers)
        self.streams = int(streams)
        height, width = int(self.manifest.input_shape[0]), int(self.manifest.input_shape[1])
        self.input_size: tuple[int, int] = (height, width)
        self._input_shape = (height, width, 1)
        self.ready = False

        # Bounded: a full queue answers 503 at once (app/workqueue.py).
        self._queue = WorkQueue(max_queued, "uploads waiting for the model")
        self._threads: list[threading.Thread] = []
        # One stream collects a batch at a time; the others are in a model call or waiting.
        self._collecting = threading.Lock()
        self._closing = False
        self._last_arrival: float | None = None
        self._gap_ewma_s: float | None = None  # recent gap between arrivals
        self._demand_ewma: float | None = None  # recent requests per batch incl. those queued
        # Model calls running now, for the lone-request rule (a runtime with a latency model).
        self._in_flight = 0
        self._flight_lock = threading.Lock()
        self._has_latency_model = bool(getattr(runtime, "latency", False))
        if latency_policy not in ("auto", "on"):
            raise ValueError(
                f"latency_policy should be 'auto' or 'on'. Received: {latency_policy!r}"
            )
        self.latency_policy: LatencyPolicy = latency_policy
        self.lone_calls = LoneCallChooser()  # "auto": which model a lone request runs on
        self._function = self._build_function() if inference == "function" else None
        # with a converted runtime the features come from the IR's call (ood_from_runtime) or
        # from the Keras model in a second call
        self._features = (
            self._build_function() if runtime and ood and not self.ood_from_runtime else None
        )
        self._scorer = self._build_scorer() if self.ood_from_runtime else None

    # --- inference ------------------------------------------------------------------------

    def _build_function(self) -> Callable[[Any], Any]:
        import tensorflow as tf

        h, w, c = self._input_shape
        signature = [tf.TensorSpec([None, h, w, c], tf.float32)]
        if self._ood_model is not None and self.ood is not None:
            # [scores, OOD scores] in one call: the detector runs in the graph (models.ood)
            both, detector = self._ood_model, self.ood.tf_scorer()

            @tf.function(input_signature=signature)
            def serve_scored(x: Any) -> Any:
                scores, features = both(x, training=False)
                return scores, detector(features)

            return serve_scored
        model = self.model

        # Traced once for every batch size (None); much cheaper per call than model.predict().
        @tf.function(input_signature=signature)
        def serve(x: Any) -> Any:
            return model(x, training=False)

        return serve

    def _build_scorer(self) -> Callable[[Any], Any]:
        """The detector alone as a ``tf.function``: OOD features ``(N, D)`` -> ``(N,)``
        scores, the same ops as in the TensorFlow serving graph (:meth:`_build_function`)."""
        import tensorflow as tf

        assert self.ood is not None
        detector = self.ood.tf_scorer()

        @tf.function(input_signature=[tf.TensorSpec([None, self.ood.dimension], tf.float32)])
        def score(features: Any) -> Any:
            return detector(features)

        return score

    def _infer(self, batch: np.ndarray, alone: bool = False) -> np.ndarray:
        """One model call on a (N, H, W, 1) float32 batch -> (N, classes) scores."""
        return self._infer_scored(batch, alone)[0]

    def _infer_scored(
        self, batch: np.ndarray, alone: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One model call -> ((N, classes) scores, (N,) OOD scores or None); ``alone``: on
        the runtime's latency model (only when it has one)."""
        ood: np.ndarray | None = None
        if self.runtime is not None and self._scorer is not None:
            # one OpenVINO call for the scores and the features; the detector in TensorFlow
            import tensorflow as tf

            out, features = self.runtime.predict_with_features(batch, alone=alone)
            with tf.device(self.device.name):
                ood = np.asarray(self._scorer(tf.constant(features)))
        elif self.runtime is not None:
            out = self.runtime.predict(batch, alone=True) if alone else self.runtime.predict(batch)
            if self._features is not None:  # the Keras model's [scores, OOD scores]
                import tensorflow as tf

                with tf.device(self.device.name):
                    ood = np.asarray(self._features(tf.constant(batch))[1])
        else:
            import tensorflow as tf

            with tf.device(self.device.name):
                if self._function is not None:
                    out = self._function(tf.constant(batch))
                elif self._ood_model is not None:
                    out = self._ood_model.predict_on_batch(batch)
                else:
                    out = self.model.predict_on_batch(batch)
            if self._ood_model is not None and self.ood is not None:
                out, second = out
                ood = (
                    np.asarray(second)  # already scored in the graph
                    if self._function is not None
                    else self.ood.scores(np.asarray(second, dtype=np.float32))
                )
        scores = np.asarray(out, dtype=np.float32)
        if scores.ndim != 2 or scores.shape[0] != batch.shape[0]:
            raise InferenceError(
                f"the model returned an output of shape {scores.shape} for a batch of "
                f"{batch.shape[0]}; expected ({batch.shape[0]}, classes)"
            )
        return scores, ood

    def warmup(self) -> None:
        """Run one real prediction at batch size 1 and one at max batch size; set ready."""
        one = np.zeros((1, *self._input_shape), dtype=np.float32)
        scores = self._infer(one)
        if not np.all(np.isfinite(scores)):  # broken weights (e.g. a diverged member): not
            raise ModelCorruptError(  # something a retried request would get past
                f"model {self.manifest.ref} returned non-finite scores {scores[0]} on the "
                "warm-up image: its weights are broken"
            )
        if self._has_latency_model:  # its first call is slow too; then seed the chooser
            self._infer(one, alone=True)
            if self.latency_policy == "auto":
                for _ in range(3):
                    for latency in (True, False):
                        t0 = time.perf_counter()
                        self._infer(one, alone=latency)
                        self.lone_calls.record(latency, (time.perf_counter() - t0) * 1000.0)
        self._decide(scores[0])  # the manifest's classes and threshold fit the output
        if self.max_batch_size > 1:
            self._infer(np.zeros((self.max_batch_size, *self._input_shape), dtype=np.float32))
            if self.batch_tuning == "auto":
                self.tune_batch_limit()
        self.ready = True

    def tune_batch_limit(self, rounds: int = TUNING_ROUNDS) -> int:
        """Measure ms per image at batch sizes 1, 2, 4, ... up to max_batch_size (interleaved,
        ``rounds`` calls each, the fastest call counted) and cap batches at the most efficient.

        On a GPU the biggest batch is nearly always the most efficient; on a CPU it often is
        not (figures for ResNet50 on 2 cores: docs/benchmarks/serve.md), and batches the
        size of the client count would then cost throughput exactly when the load is high.
        """
        sizes = batch_size_candidates(self.max_batch_size)
        batches = {n: np.zeros((n, *self._input_shape), dtype=np.float32) for n in sizes}
        best: dict[int, float] = {}
        for _ in range(rounds):
            for n in sizes:
                t0 = time.perf_counter()
                self._infer(batches[n])
                ms = (time.perf_counter() - t0) * 1000.0 / n
                best[n] = min(ms, best.get(n, math.inf))
        self.batch_timings = best
        self.batch_limit = choose_batch_limit(best)
        log.info(
            "batch size limit %d of at most %d (warm-up, ms per image: %s)",
            self.batch_limit,
            self.max_batch_size,
            ", ".join(f"{n}: {ms:.1f}" for n, ms in best.items()),
        )
        return self.batch_limit

    def _decide(self, scores: np.ndarray) -> str:
        from radlens.models.registry import decide

        return decide(scores, self.manifest, self.operating_point)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker threads, one per stream (idempotent)."""
        if self._threads and any(t.is_alive() for t in self._threads):
            return
        self._closing = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"radlens-predictor-{i}", daemon=True)
            for i in range(self.streams)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting work, finish what is queued, stop the worker threads."""
        self._closing = True
        threads = self._threads
        for _ in threads:
            self._queue.put_stop()
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("predictor worker did not stop within %.1f s", timeout_s)
        self._threads = []
        self.ready = False
        # Anything still queued (the worker timed out, or raced the stop) is failed, not lost.
        self._fail_leftovers(PredictorUnavailableError("the predictor was stopped"))

    def _fail_leftovers(self, exc: RadlensError) -> None:
        for item in self._queue.drain():
            if isinstance(item, _Item):
                self._resolve_exception(item, exc)

    @property
    def running(self) -> bool:
        alive = bool(self._threads) and all(t.is_alive() for t in self._threads)
        return alive and not self._closing

    # --- the request side -----------------------------------------------------------------

    def check_capacity(self) -> None:
        """Raise ServiceBusyError (503, Retry-After) when the queue holds ``max_queued``."""
        self._queue.check()

    def queue_depth(self) -> int:
        """How many uploads wait for a model call (the /metrics queue-depth gauge)."""
        return self._queue.qsize()

    async def predict(self, model_input: np.ndarray) -> PredictionOutput:
        """Queue one (H, W, 1) float32 image and await its prediction."""
        return await self._enqueue(self._check_input(model_input), None)

    async def predict_prepared(self, prepare: Prepare) -> PredictionOutput:
        """Queue a request whose model input ``prepare()`` builds, and await its prediction.

        ``prepare`` (e.g. decode and preprocess an upload) runs on the stream that takes the
        request, right before that stream's model call: one thread prepares its whole batch
        while the other streams' model calls keep the cores busy, with no hop through another
        thread per request. Whatever ``prepare`` hands back besides the model input comes
        back as ``PredictionOutput.prepared``; what it raises is raised here, for this request
        only. With one stream, preparing on it would hold the model up, so ``prepare`` runs in
        a worker thread first and overlaps the model calls of other requests.
        """
        if self.streams == 1:
            array, prepared = await run_in_threadpool(prepare)
            output = await self.predict(array)
            return replace(output, prepared=prepared)
        return await self._enqueue(None, prepare)

    async def _enqueue(self, array: np.ndarray | None, prepare: Prepare | None) -> PredictionOutput:
        if self._closing:
            raise PredictorUnavailableError("the predictor is stopping")
        if not self._threads:
            await self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PredictionOutput] = loop.create_future()
        self._queue.put(_Item(array, future, loop, time.perf_counter(), prepare))
        return await future

    def _check_input(self, model_input: Any) -> np.ndarray:
        if not isinstance(model_input, np.ndarray):
            raise InvalidImageError(
                f"the model input should be a numpy array of shape {self._input_shape}. "
                f"Received: {type(model_input).__name__}"
            )
        if model_input.shape != self._input_shape:
            raise InvalidImageError(
                f"the model input should have shape {self._input_shape} (H, W, 1). "
                f"Received: shape={model_input.shape}"
            )
        if not np.issubdtype(model_input.dtype, np.number):
            raise InvalidImageError(
                f"the model input should be float32. Received: dtype={model_input.dtype}"
            )
        return np.asarray(model_input, dtype=np.float32)

    # --- the worker thread ----------------------------------------------------------------

    def _note_arrival(self, item: _Item) -> None:
        if self._last_arrival is not None:
            gap = max(0.0, item.queued_at - self._last_arrival)
            self._gap_ewma_s = (
                gap if self._gap_ewma_s is None else 0.7 * self._gap_ewma_s + 0.3 * gap
            )
        self._last_arrival = item.queued_at

    def _waiting_can_help(self) -> bool:
        # Only when there are other clients (recent batches saw more than one request) and
        # requests have recently arrived closer together than the wait itself.
        return (
            self._demand_ewma is not None
            and self._demand_ewma > 1.5
            and self._gap_ewma_s is not None
            and self._gap_ewma_s * 1000.0 < self.max_batch_wait_ms
        )

    def _note_demand(self, batch_size: int) -> None:
        demand = batch_size + self._queue.qsize()  # this batch + what queued while it ran
        self._demand_ewma = (
            float(demand) if self._demand_ewma is None else 0.5 * self._demand_ewma + 0.5 * demand
        )

    def _collect(self, first: _Item) -> tuple[list[_Item], bool, float, bool]:
        """Build a batch after ``first``; returns (batch, waited, wait_ms, stop_seen)."""
        batch = [first]
        # One stream: counted from when the first item was queued (under load it has passed
        # by the time the worker is free, so what queued runs at once). Several: counted from
        # now, since another stream's model call keeps the cores busy meanwhile.
        since = first.queued_at if self.streams == 1 else time.perf_counter()
        deadline = since + self.max_batch_wait_ms / 1000.0
        waited = False
        wait_s = 0.0
        while len(batch) < self.batch_limit:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or not self._waiting_can_help():
                    break
                waited = True
                t0 = time.perf_counter()
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    wait_s += time.perf_counter() - t0
                    break
                wait_s += time.perf_counter() - t0
            if nxt is STOP:
                return batch, waited, wait_s * 1000.0, True
            self._note_arrival(nxt)
            batch.append(nxt)
        return batch, waited, wait_s * 1000.0, False

    def _worker(self) -> None:
        while True:
            with self._collecting:  # one stream collects at a time
                first = self._queue.get()
                if first is STOP:
                    break
                self._note_arrival(first)
                batch, waited, wait_ms, stop_seen = self._collect(first)
            self._run_batch(batch, waited, wait_ms)
            if stop_seen:
                break
        # Drain what was queued before the stop marker arrived after it (a race with stop()),
        # leaving the other streams' stop markers for them.
        with self._collecting:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is STOP:
                    self._queue.put_stop()
                    break
                if isinstance(item, _Item):
                    self._run_batch([item], False, 0.0)

    def _run_batch(self, batch: list[_Item], waited: bool, wait_ms: float) -> None:
        live = self._prepare([item for item in batch if not item.future.cancelled()])
        if not live:
            return
        started = time.perf_counter()
        queue_ms = (started - min(item.queued_at for item in live)) * 1000.0
        ok = False
        inference_ms = 0.0
        alone = False
        try:
            stacked = np.stack([cast(np.ndarray, item.array) for item in live])  # all prepared
            with self._flight_lock:
                lone = self._lone(len(live))
                alone = bool(lone)
                self._in_flight += 1
            t0 = time.perf_counter()
            try:
                if self.ood is None:
                    # the one-argument call when not alone (tests wrap _infer(batch))
                    scores = self._infer(stacked, alone=True) if alone else self._infer(stacked)
                    ood = None
                else:  # one call for the scores and the features the detector scores
                    scores, ood = self._infer_scored(stacked, alone)
            finally:
                with self._flight_lock:
                    self._in_flight -= 1
            inference_ms = (time.perf_counter() - t0) * 1000.0
            if lone is not None and self.latency_policy == "auto":
                with self._flight_lock:
                    self.lone_calls.record(alone, inference_ms)
            self._note_demand(len(live))
            outputs = [
                PredictionOutput(
                    scores=scores[i].copy(),
                    label=self._decide(scores[i]),
                    inference_ms=inference_ms,
                    batch_size=len(live),
                    prepared=live[i].prepared,
                    ood_score=None if ood is None else float(ood[i]),
                )
                for i in range(len(live))
            ]
            ok = True
        except Exception as exc:  # the model's failure is this batch's, not the worker's
            log.exception("inference failed for a batch of %d", len(live))
            detail = f"{type(exc).__name__}: {_error_summary(exc)}"
            for item in live:  # one exception object per caller: each await re-raises its own
                error = InferenceError(detail)
                error.__cause__ = exc
                self._resolve_exception(item, error)
        else:
            # One wake-up per event loop for the whole batch, not one per request.
            resolve_all(
                (item.loop, item.future, output) for item, output in zip(live, outputs, strict=True)
            )
        stats = BatchStats(len(live), inference_ms, wait_ms, queue_ms, waited, ok, alone)
        for observer in self.observers:
            try:
                observer(stats)
            except Exception:  # a metrics bug must not stop inference
                log.exception("batch observer %r failed", observer)

    def _lone(self, batch_size: int) -> bool | None:
        """None unless this is a lone call: the runtime has a latency model, the batch is one
        request, and no other call runs or waits (under load another stream's call or a queued
        request is always there, so the streams keep their cores). Then True to run it on the
        latency model (``on``, or ``auto`` when it is measured faster), False on the streams
        model. Call with ``_flight_lock`` held."""
        if not (
            self._has_latency_model
            and batch_size == 1
            and self._in_flight == 0
            and self._queue.qsize() == 0
        ):
            return None
        return True if self.latency_policy == "on" else self.lone_calls.choose()

    def _prepare(self, batch: list[_Item]) -> list[_Item]:
        """Run each item's prepare(); an item whose preparation fails gets its own error and
        leaves the batch (the others still run)."""
        ready = []
        for item in batch:
            if item.prepare is not None:
                prepare, item.prepare = item.prepare, None
                try:
                    array, item.prepared = prepare()
                    item.array = self._check_input(array)
                except Exception as exc:
                    self._resolve_exception(item, exc)
                    continue
            ready.append(item)
        return ready

    @staticmethod
    def _resolve_exception(item: _Item, exc: BaseException) -> None:
        fail(item.loop, item.future, exc)


def _log_finding_point(manifest: ModelManifest, point: OperatingPoint) -> None:
    """A multi-label model at a named operating point: the thresholds it decides each
    finding at (INFO), and a WARNING naming the findings that lack the point and keep their
    trained threshold, with why when training recorded it -- a site that set sens95 must
    know which findings are not at 95% sensitivity."""
    if point.finding_thresholds is None or point.name is None:
        return
    log.info(
        "RADLENS_OPERATING_POINT=%s: model %s decides each finding at %s",
        point.name,
        manifest.ref,
        ", ".join(
            f"{f} {t:.4g} ({(point.finding_points or {}).get(f, point.name)})"
            for f, t in point.finding_thresholds.items()
        ),
    )
    kept = point.kept
    if not kept:
        return
    reasons = finding_points_not_computed(manifest.metrics)

    def why(finding: str) -> str:
        reason = reasons.get(finding, {}).get(str(point.name))
        return f"{finding} ({reason})" if reason else finding

    log.warning(
        "RADLENS_OPERATING_POINT=%s: model %s has no %s operating point for %d of its %d "
        "findings, which keep their trained threshold: %s",
        point.name,
        manifest.ref,
        point.name,
        len(kept),
        len(manifest.class_names),
        "; ".join(why(f) for f in kept),
    )


def load_predictor(settings: Any) -> Predictor:
    """Select the device, load the configured model onto it, pick the runtime (TensorFlow or
    OpenVINO fp32/bf16, app.startup.choose_runtime), build the Predictor, warm it up.

    The device is chosen first: GPU memory growth must be set before the model's variables
    initialise the GPU. The Keras model is always loaded (Grad-CAM needs it).
    """
    import tensorflow as tf

    from radlens.app.startup import choose_runtime, registry_for

    device = select_device(settings.device)
    registry = registry_for(settings)
    with tf.device(device.name):
        loaded = registry.load(settings.model)
    selection = choose_runtime(settings, registry, loaded.manifest, device.kind)
    runtime = None
    if selection.runtime == "openvino":
        files = registry.runtime_files(loaded.manifest, "openvino")
        xml = next(path for path in files.values() if path.name == "model.xml")
        try:
            runtime = OpenVINORuntime(
                xml,
                selection.precision,
                tuple(loaded.manifest.input_shape),
                streams=settings.inference_streams,
                latency=getattr(settings, "latency_model", "auto") != "off",
            )
            if runtime.latency:
                log.info(
                    "a lone request runs on the %s model compiled for latency (every core) %s; "
                    "concurrent ones on %d streams",
                    selection.precision,
                    "when it is measured faster"
                    if getattr(settings, "latency_model", "auto") == "auto"
                    else "always",
                    runtime.streams,
                )
        except ModelCorruptError as exc:
            explicit = getattr(settings, "runtime", "auto") != "auto"
            if explicit or getattr(settings, "precision", "auto") == "bf16":
                raise
            selection = Selection("tensorflow", "fp32", f"auto: {exc.detail}", fallback=True)
            log.warning("serving with TensorFlow fp32: %s", selection.reason)
    ood = None
    if getattr(settings, "ood", "off") != "off":
        from radlens.models.ood import load_detector

        path = registry.ood_detector_file(loaded.manifest)  # checked against its sha256
        if path is not None:
            ood = load_detector(path)  # an ensemble's has one detector per member
        else:
            log.warning(
                "model %s has no OOD detector: predictions carry no ood_score (add one with "
                "`radlens models ood %s --data PATH`)",
                loaded.manifest.ref,
                loaded.manifest.ref,
            )
    predictor = Predictor(
        loaded,
        device,
        max_batch_size=settings.max_batch_size,
        max_batch_wait_ms=settings.max_batch_wait_ms,
        batch_tuning=settings.batch_tuning,
        streams=settings.inference_streams,
        max_queued=settings.max_queued_predictions,
        runtime=runtime,
        selection=selection,
        operating_point_name=getattr(settings, "operating_point", None),
        ood=ood,
        latency_policy="on" if getattr(settings, "latency_model", "auto") == "on" else "auto",
    )
    predictor.warmup()
    return predictor
