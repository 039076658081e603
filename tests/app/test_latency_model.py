"""A lone request on the runtime's latency model (RADLENS_LATENCY_MODEL, app/predictor.py).

The tiny model converted to OpenVINO through the real registry; the Predictor runs with two
streams as the service does. What is checked: a lone request (nothing else queued or in a
model call) runs on the latency model, concurrent ones on the streams, and every prediction
is the one the streams model alone gives, bit for bit. No timed assertions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.app.device import DeviceInfo
from radlens.app.predictor import BatchStats, LoneCallChooser, Predictor
from radlens.models.registry import LoadedModel, ModelRegistry
from radlens.models.runtime import OpenVINORuntime, bf16_supported, openvino_version
from tests.app.conftest import TestClient, make_settings, png_bytes, save_tiny_model

pytestmark = pytest.mark.skipif(openvino_version() is None, reason="openvino not installed")

CPU = DeviceInfo("/CPU:0", "cpu", False)
# bf16 where the CPU has it (what `auto` serves there, and where the latency model is kept);
# elsewhere fp32, whose latency model the bit-for-bit probe may drop (models/runtime.py)
PRECISION = "bf16" if openvino_version() is not None and bf16_supported() else "fp32"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedModel, Path]:
    from radlens.models.runtime import add_openvino_runtime
    from tests.app.test_runtime_serving import parity_images

    xs, labels = parity_images()
    store = tmp_path_factory.mktemp("latency")
    save_tiny_model(store)
    registry = ModelRegistry(store)
    # parity recorded (real val images) so the service may serve bf16 where the CPU has it
    manifest = add_openvino_runtime(registry, "tiny:1", images=xs, labels=labels)
    files = registry.runtime_files(manifest, "openvino")
    xml = next(path for path in files.values() if path.name == "model.xml")
    return store, registry.load("tiny:1"), xml


def images(count: int) -> np.ndarray:
    return np.random.default_rng(5).random((count, 32, 32, 1), dtype=np.float32)


def predictor_on(
    loaded: LoadedModel, runtime: OpenVINORuntime, policy: str = "on"
) -> tuple[Predictor, list[Any]]:
    stats: list[BatchStats] = []
    predictor = Predictor(
        loaded,
        CPU,
        max_batch_size=4,
        max_batch_wait_ms=50.0,
        streams=2,
        runtime=runtime,
        observers=[stats.append],
        latency_policy=policy,  # type: ignore[arg-type]
    )
    predictor.warmup()
    return predictor, stats


def run(coro: Any) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(coro, 120.0)

    return asyncio.run(guarded())


def latency_runtimes(xml: Path) -> tuple[OpenVINORuntime, OpenVINORuntime]:
    """The IR with its latency model, and without (the model before round 8); skips when this
    CPU keeps no latency model at ``PRECISION``."""
    runtime = OpenVINORuntime(xml, PRECISION, (32, 32, 1), streams=2, latency=True)
    if not runtime.latency:
        pytest.skip(f"no latency model on this CPU in {PRECISION}: {runtime.latency_note}")
    return runtime, OpenVINORuntime(xml, PRECISION, (32, 32, 1), streams=2)


async def one_by_one(predictor: Any, xs: np.ndarray) -> list[Any]:
    """Start the predictor, send ``xs`` one at a time (each a lone request), stop it."""
    await predictor.start()
    try:
        return [await predictor.predict(x) for x in xs]
    finally:
        await predictor.stop()


class TestPredictor:
    def test_lone_requests_run_on_the_latency_model_with_the_same_scores(
        self, converted: tuple[Path, LoadedModel, Path]
    ) -> None:
        _, loaded, xml = converted
        runtime, plain = latency_runtimes(xml)
        predictor, stats = predictor_on(loaded, runtime)
        xs = images(6)

        outs = run(one_by_one(predictor, xs))
        assert [(s.size, s.alone, s.ok) for s in stats] == [(1, True, True)] * len(xs)
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(out.scores, plain.predict(x[None])[0])
            assert out.label == predictor._decide(plain.predict(x[None])[0])

    def test_concurrent_requests_keep_the_streams(
        self, converted: tuple[Path, LoadedModel, Path]
    ) -> None:
        _, loaded, xml = converted
        runtime = OpenVINORuntime(xml, PRECISION, (32, 32, 1), streams=2, latency=True)
        plain = OpenVINORuntime(xml, PRECISION, (32, 32, 1), streams=2)
        predictor, stats = predictor_on(loaded, runtime)
        xs = images(24)

        async def at_once() -> list[Any]:
            await predictor.start()
            try:
                return await asyncio.gather(*(predictor.predict(x) for x in xs))
            finally:
                await predictor.stop()

        outs = run(at_once())
        assert sum(s.size for s in stats) == len(xs)
        assert any(s.size > 1 for s in stats)
        # only a batch of one with nothing else queued or running may take every core
        assert all(s.size == 1 for s in stats if s.alone)
        assert sum(s.alone for s in stats) < len(stats)
        for x, out in zip(xs, outs, strict=True):  # batched: float noise of batching only
            np.testing.assert_allclose(out.scores, plain.predict(x[None])[0], atol=1e-5)

    def test_without_a_latency_model_nothing_is_alone(
        self, converted: tuple[Path, LoadedModel, Path]
    ) -> None:
        _, loaded, xml = converted
        runtime = OpenVINORuntime(xml, PRECISION, (32, 32, 1), streams=2)  # latency off
        predictor, stats = predictor_on(loaded, runtime)

        run(one_by_one(predictor, images(3)))
        assert [(s.size, s.alone) for s in stats] == [(1, False)] * 3

    def test_auto_seeds_both_timings_at_warm_up_and_runs_each_lone_call_on_one(
        self, converted: tuple[Path, LoadedModel, Path]
    ) -> None:
        _, loaded, xml = converted
        runtime, plain = latency_runtimes(xml)
        predictor, stats = predictor_on(loaded, runtime, policy="auto")
        assert all(ms is not None for ms in predictor.lone_calls.ms.values())  # warm-up
        xs = images(20)

        outs = run(one_by_one(predictor, xs))
        assert [s.size for s in stats] == [1] * len(xs)
        # every 16th lone call tries the slower model: both ran, whichever is faster here
        assert {s.alone for s in stats} == {True, False}
        for x, out in zip(xs, outs, strict=True):  # either way, the same scores
            np.testing.assert_array_equal(out.scores, plain.predict(x[None])[0])

    def test_bad_policy(self, converted: tuple[Path, LoadedModel, Path]) -> None:
        _, loaded, xml = converted
        runtime = OpenVINORuntime(xml, PRECISION, (32, 32, 1), streams=2)
        with pytest.raises(ValueError, match="latency_policy should be 'auto' or 'on'"):
            predictor_on(loaded, runtime, policy="always")


class TestLoneCallChooser:
    def test_tries_each_then_takes_the_faster_and_explores(self) -> None:
        chooser = LoneCallChooser(explore_every=4)
        assert chooser.choose() is True  # no time yet for the latency model
        chooser.record(True, 30.0)
        assert chooser.choose() is False  # nor for the streams model
        chooser.record(False, 16.0)
        # streams faster: it runs, and every 4th choice the latency model is tried again
        assert [chooser.choose() for _ in range(6)] == [False, True, False, False, False, True]

    def test_follows_a_change_of_load(self) -> None:
        chooser = LoneCallChooser(explore_every=4, alpha=0.5)
        chooser.record(True, 30.0)  # busy machine: one call over both cores stalls
        chooser.record(False, 16.0)
        for _ in range(4):  # the machine became quiet: the latency model takes 8 ms
            chooser.record(True, 8.0)
        assert chooser.ms[True] is not None and chooser.ms[True] < 16.0
        assert chooser.choose() is True

    @pytest.mark.parametrize(("every", "alpha"), [(1, 0.3), (16, 0.0), (16, 1.5)])
    def test_bad_options(self, every: int, alpha: float) -> None:
        with pytest.raises(ValueError, match="explore_every must be >= 2"):
            LoneCallChooser(explore_every=every, alpha=alpha)


class TestService:
    def test_setting_turns_it_on_and_off_with_identical_predictions(
        self, converted: tuple[Path, LoadedModel, Path], tmp_path: Path
    ) -> None:
        from radlens.app.main import create_app

        store = converted[0]
        found: dict[str, Any] = {}
        for mode in ("auto", "on", "off"):
            settings = make_settings(
                f"sqlite:///{tmp_path / mode / 'radlens.db'}",
                store,
                runtime="openvino",
                precision=PRECISION,
                inference_streams=2,
                latency_model=mode,
                # the untrained tiny model's parity proves nothing: not what is tested here
                parity_max_auc_difference=1.0,
                parity_max_flip_fraction=1.0,
            )
            app = create_app(settings)
            with TestClient(app) as client:
                runtime = app.state.resources.predictor.runtime
                found[mode] = runtime.latency
                found[f"{mode}-policy"] = app.state.resources.predictor.latency_policy
                body = client.post(
                    "/v1/predictions", files={"file": ("a.png", png_bytes(seed=11))}
                ).json()
                assert (body["runtime"], body["precision"]) == ("openvino", PRECISION)
                found[f"{mode}-scores"] = body["scores"]
        assert found["off"] is False
        if PRECISION == "bf16":
            assert found["auto"] is True and found["on"] is True
        assert (found["auto-policy"], found["on-policy"]) == ("auto", "on")
        # the JSON floats, exactly
        assert found["auto-scores"] == found["on-scores"] == found["off-scores"]
