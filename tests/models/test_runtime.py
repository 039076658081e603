"""Runtimes: parity figures, the selection rule, OpenVINO conversion attached to a stored model."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from radlens.models import registry as registry_module
from radlens.models.errors import (
    ConfigurationError,
    InvalidImageError,
    ModelCorruptError,
    ModelNotFoundError,
    ModelTamperedError,
    RuntimeUnavailableError,
)
from radlens.models.registry import ModelRegistry, predict_scores
from radlens.models.runtime import (
    OpenVINORuntime,
    Parity,
    Tolerance,
    add_openvino_runtime,
    bf16_supported,
    measure_findings_parity,
    measure_parity,
    openvino_version,
    recorded_parity,
    select_runtime,
)
from tests.conftest import REPO_ROOT, shared_data_path

PP_VERSION = "test-pp-1"
needs_openvino = pytest.mark.skipif(openvino_version() is None, reason="openvino not installed")


@pytest.fixture(autouse=True)
def fixed_preprocessing_version(monkeypatch):
    monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: PP_VERSION)
    monkeypatch.delenv("RADLENS_MODEL_SIGNING_KEY", raising=False)


# --- parity --------------------------------------------------------------------------------


def binary(positive: list[float]) -> np.ndarray:
    p = np.asarray(positive)
    return np.stack([1 - p, p], axis=1)


class TestMeasureParity:
    def test_known_values(self):
        labels = np.array([0, 0, 1, 1])
        reference = binary([0.1, 0.45, 0.55, 0.9])
        candidate = binary([0.1, 0.52, 0.48, 0.9])  # two labels flip at 0.5, ranking swaps
        parity = measure_parity(reference, candidate, labels, 0.5)
        assert parity.n == 4
        assert parity.auc_reference == pytest.approx(1.0)
        assert parity.auc == pytest.approx(0.75)
        assert parity.auc_difference == pytest.approx(0.25)
        assert parity.max_score_difference == pytest.approx(0.07)
        assert (parity.flips, parity.flip_fraction) == (2, 0.5)

    def test_threshold_decides_the_flips(self):
        labels = np.array([0, 1])
        reference, candidate = binary([0.30, 0.8]), binary([0.34, 0.8])
        assert measure_parity(reference, candidate, labels, 0.5).flips == 0
        assert measure_parity(reference, candidate, labels, 0.32).flips == 1

    def test_identical_scores(self):
        scores = binary([0.2, 0.7, 0.4])
        parity = measure_parity(scores, scores.copy(), np.array([[0], [1], [0]]), None)
        assert (parity.auc_difference, parity.max_score_difference, parity.flips) == (0.0, 0.0, 0)

    def test_multiclass_uses_argmax(self):
        reference = np.array([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
        candidate = np.array([[0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
        parity = measure_parity(reference, candidate, np.array([0, 1, 2]), 0.9)
        assert parity.flips == 1 and parity.threshold is None

    def test_one_class_has_no_auc(self):
        parity = measure_parity(binary([0.2, 0.3]), binary([0.2, 0.3]), np.array([1, 1]), 0.5)
        assert parity.auc is None and parity.auc_difference is None
        assert not Tolerance().allows(parity)

    @pytest.mark.parametrize(
        ("reference", "candidate", "labels", "match"),
        [
            (binary([0.1]), binary([0.1, 0.2]), np.array([0]), "same N"),
            (binary([0.1]), binary([np.nan]), np.array([0]), "finite"),
            (np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), "N >= 1"),
        ],
    )
    def test_bad_input(self, reference, candidate, labels, match):
        with pytest.raises(ValueError, match=match):
            measure_parity(reference, candidate, labels, 0.5)

    def test_round_trip_through_a_manifest_dict(self):
        parity = measure_parity(binary([0.1, 0.9]), binary([0.12, 0.88]), np.array([0, 1]), 0.5)
        assert Parity.from_dict(json.loads(json.dumps(parity.to_dict()))) == parity
        assert Parity.from_dict(None) is None and Parity.from_dict({"n": 1}) is None


class TestMeasureFindingsParity:
    """Multi-label findings: per finding, then the worst finding and all decisions."""

    def test_known_values(self):
        targets = np.array([[0, 1], [0, 0], [1, 1], [1, 0]])
        reference = np.array([[0.1, 0.9], [0.45, 0.2], [0.55, 0.8], [0.9, 0.1]])
        candidate = np.array([[0.1, 0.9], [0.52, 0.2], [0.48, 0.8], [0.9, 0.1]])
        thresholds = {"a": 0.5, "b": 0.3}
        parity = measure_findings_parity(reference, candidate, targets, thresholds)
        a, b = parity.per_finding["a"], parity.per_finding["b"]
        # a: two decisions flip at 0.5 and the ranking of rows 2 and 3 swaps (AUC 1 -> 0.75)
        assert (a["auc_reference"], a["auc"], a["flips"]) == (1.0, 0.75, 2)
        assert a["max_score_difference"] == pytest.approx(0.07)
        assert (b["auc_difference"], b["flips"], b["threshold"]) == (0.0, 0, 0.3)
        assert parity.auc_difference == pytest.approx(0.25)  # the worst finding
        assert parity.auc_reference == pytest.approx(1.0) and parity.auc == pytest.approx(0.875)
        assert (parity.n, parity.flips, parity.flip_fraction) == (4, 2, 2 / 8)
        assert parity.threshold is None
        assert "2/8 (image, finding) decisions flipped" in parity.summary()
        assert not Tolerance().allows(parity)

    def test_each_finding_decided_at_its_own_threshold(self):
        targets = np.array([[0, 1], [1, 0]])
        reference = np.array([[0.30, 0.30], [0.8, 0.8]])
        candidate = np.array([[0.34, 0.34], [0.8, 0.8]])
        parity = measure_findings_parity(reference, candidate, targets, {"a": 0.32, "b": 0.5})
        assert parity.per_finding["a"]["flips"] == 1 and parity.per_finding["b"]["flips"] == 0

    def test_a_one_class_finding_has_no_auc_and_the_others_decide(self):
        targets = np.array([[0, 1], [1, 1]])
        scores = np.array([[0.2, 0.7], [0.9, 0.6]])
        parity = measure_findings_parity(scores, scores.copy(), targets, {"a": 0.5, "b": 0.5})
        assert parity.per_finding["b"]["auc"] is None
        assert parity.auc_difference == 0.0 and Tolerance().allows(parity)

    @pytest.mark.parametrize(
        ("targets", "thresholds", "match"),
        [
            (np.array([0, 1]), {"a": 0.5, "b": 0.5}, "same N"),
            (np.array([[0, 1], [1, 0]]), {"a": 0.5}, "one threshold per finding"),
        ],
    )
    def test_bad_input(self, targets, thresholds, match):
        scores = np.array([[0.2, 0.7], [0.9, 0.6]])
        with pytest.raises(ValueError, match=match):
            measure_findings_parity(scores, scores, targets, thresholds)

    def test_round_trip_keeps_the_findings_and_old_records_read(self):
        targets = np.array([[0, 1], [1, 0]])
        parity = measure_findings_parity(
            np.array([[0.1, 0.9], [0.8, 0.3]]),
            np.array([[0.11, 0.9], [0.8, 0.31]]),
            targets,
            {"a": 0.5, "b": 0.5},
        )
        assert Parity.from_dict(json.loads(json.dumps(parity.to_dict()))) == parity
        single = measure_parity(binary([0.1, 0.9]), binary([0.1, 0.9]), np.array([0, 1]), 0.5)
        assert "per_finding" not in single.to_dict()  # single-label records unchanged
        assert Parity.from_dict(single.to_dict()) == single


def parity(auc_difference: float | None = 0.0, flip_fraction: float = 0.0) -> Parity:
    return Parity(100, 0.9, 0.9, auc_difference, 0.01, int(flip_fraction * 100), flip_fraction, 0.5)


class TestTolerance:
    def test_limits_are_inclusive(self):
        tol = Tolerance(max_auc_difference=0.002, max_flip_fraction=0.01)
        assert tol.allows(parity(0.002, 0.01))
        assert not tol.allows(parity(0.0021, 0.0))
        assert not tol.allows(parity(0.0, 0.02))

    def test_bad_limits(self):
        with pytest.raises(ConfigurationError, match="max_flip_fraction"):
            Tolerance(max_flip_fraction=2.0)


# --- selection -----------------------------------------------------------------------------

GOOD = {"fp32": parity(0.0), "bf16": parity(0.0005, 0.003)}


def choose(runtime="auto", precision="auto", *, device="cpu", problem=None, bf16=True, par=None):
    return select_runtime(
        runtime=runtime,
        precision=precision,
        device_kind=device,
        openvino_problem=problem,
        bf16=bf16,
        parity=GOOD if par is None else par,
        tolerance=Tolerance(),
    )


class TestSelectRuntime:
    def test_auto_on_a_bf16_cpu_with_good_parity_is_openvino_bf16(self):
        chosen = choose()
        assert (chosen.runtime, chosen.precision, chosen.fallback) == ("openvino", "bf16", False)
        assert chosen.parity == GOOD["bf16"]

    def test_auto_without_bf16_cpu_is_openvino_fp32(self):
        chosen = choose(bf16=False)
        assert (chosen.runtime, chosen.precision) == ("openvino", "fp32")
        assert "no bf16 support" in chosen.reason

    def test_auto_with_bf16_parity_out_of_tolerance_is_fp32(self):
        chosen = choose(par={"fp32": parity(0.0), "bf16": parity(0.01)})
        assert (chosen.runtime, chosen.precision) == ("openvino", "fp32")
        assert "outside the tolerance" in chosen.reason

    def test_auto_falls_back_to_tensorflow(self):
        chosen = choose(problem="the openvino package is not installed")
        assert (chosen.runtime, chosen.precision, chosen.fallback) == ("tensorflow", "fp32", True)
        assert "not installed" in chosen.reason
        unmeasured = choose(par={"fp32": None, "bf16": None})
        assert (unmeasured.runtime, unmeasured.fallback) == ("tensorflow", True)
        assert "no fp32 parity" in unmeasured.reason

    def test_gpu_keeps_tensorflow(self):
        chosen = choose(device="gpu")
        assert (chosen.runtime, chosen.precision) == ("tensorflow", "fp32")
        with pytest.raises(RuntimeUnavailableError, match="GPU keeps TensorFlow"):
            choose(precision="bf16", device="gpu")

    def test_tensorflow_setting(self):
        assert choose("tensorflow").runtime == "tensorflow"
        assert choose("tensorflow", "fp32", problem="absent").precision == "fp32"
        with pytest.raises(ConfigurationError, match="bf16 is served by OpenVINO"):
            choose("tensorflow", "bf16")

    def test_explicit_openvino_never_falls_back(self):
        with pytest.raises(RuntimeUnavailableError, match="altered"):
            choose("openvino", problem="model.bin is altered")
        # fp32 asked explicitly: served even without recorded parity
        chosen = choose("openvino", "fp32", par={"fp32": None, "bf16": None})
        assert (chosen.runtime, chosen.precision) == ("openvino", "fp32")

    def test_explicit_bf16_is_refused_rather_than_served_in_fp32(self):
        with pytest.raises(RuntimeUnavailableError, match="no bf16 support"):
            choose(precision="bf16", bf16=False)
        with pytest.raises(RuntimeUnavailableError, match="outside the tolerance"):
            choose("openvino", "bf16", par={"fp32": parity(), "bf16": parity(0.0, 0.05)})
        with pytest.raises(RuntimeUnavailableError, match="not installed"):
            choose(precision="bf16", problem="the openvino package is not installed")

    def test_unknown_settings(self):
        with pytest.raises(ConfigurationError, match="RADLENS_RUNTIME"):
            choose("onnx")
        with pytest.raises(ConfigurationError, match="RADLENS_PRECISION"):
            choose(precision="fp16")


class FakeCore:
    def __init__(self, capabilities):
        self.capabilities = capabilities

    def get_property(self, device, name):
        assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
        return self.capabilities


def test_bf16_support_is_read_from_the_cpu_capabilities():
    assert bf16_supported(FakeCore(["FP32", "BF16", "INT8"])) is True
    assert bf16_supported(FakeCore(["FP32", "INT8"])) is False
    if openvino_version() is not None:
        assert isinstance(bf16_supported(), bool)


# --- conversion ----------------------------------------------------------------------------


def val_images(size: int = 32, count: int = 96) -> tuple[np.ndarray, np.ndarray]:
    path = shared_data_path("pneumoniamnist", "pneumoniamnist_28_trainval.npz")
    from radlens.models.preprocessing import preprocess_array

    with np.load(path) as data:
        images, labels = data["val_images"][:count], data["val_labels"][:count].reshape(-1)
    batch = np.stack([preprocess_array(im, size=(size, size)) for im in images])[..., None]
    return batch.astype(np.float32), labels


def _save_chest(root: Path) -> ModelRegistry:
    import keras

    from radlens.models.architectures import build_model

    keras.utils.set_random_seed(3)
    reg = ModelRegistry(root)
    reg.save(
        build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2),
        name="chest",
        architecture="simple_cnn",
        class_names=["normal", "pneumonia"],
        threshold=0.5,
        window=None,
        filters=[],
        metrics={"val": {"auc": 0.5}},
        training_config={},
        data_fingerprint=None,
    )
    return reg


@pytest.fixture()
def stored(tmp_path: Path) -> ModelRegistry:
    return _save_chest(tmp_path)


@pytest.fixture(scope="module")
def _converted_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``stored`` after ``add_openvino_runtime(stored, "chest:1")`` (no data), made once per
    module (a conversion took about 10 s each late in a one-process suite run); the tests that
    only use its files get a copy (``converted``), those that test the conversion still call it."""
    root = tmp_path_factory.mktemp("converted-chest")
    with pytest.MonkeyPatch.context() as mp:  # what fixed_preprocessing_version sets per test
        mp.setattr(registry_module, "_current_preprocessing_version", lambda: PP_VERSION)
        mp.delenv("RADLENS_MODEL_SIGNING_KEY", raising=False)
        add_openvino_runtime(_save_chest(root), "chest:1")
    return root


@pytest.fixture()
def converted(_converted_once: Path, tmp_path: Path) -> ModelRegistry:
    """A test's own copy of the converted store (free to alter its files)."""
    import shutil

    shutil.copytree(_converted_once, tmp_path / "store")
    return ModelRegistry(tmp_path / "store")


@needs_openvino
class TestConvertStoredModel:
    def test_convert_with_parity_keeps_identity(self, stored):
        images, labels = val_images()
        before = stored.read_manifest("chest", 1)
        after = add_openvino_runtime(
            stored, "chest:1", images=images, labels=labels, data_note="pneumoniamnist val"
        )
        assert (after.ref, after.model_sha256, after.created_at) == (
            before.ref,
            before.model_sha256,
            before.created_at,
        )
        entry = after.runtimes["openvino"]
        assert entry["openvino_version"] == openvino_version()
        files = stored.runtime_files(stored.verify("chest", 1), "openvino")
        assert sorted(Path(p).name for p in files) == ["model.bin", "model.xml"]
        fp32 = recorded_parity(after, "fp32")
        assert fp32 is not None and fp32.n == len(labels)
        assert fp32.max_score_difference < 1e-4 and fp32.flips == 0
        bf16 = recorded_parity(after, "bf16")
        assert (bf16 is not None) == entry["cpu_bf16"]
        assert not (stored.root / ".staging").exists() or not any(
            (stored.root / ".staging").iterdir()
        )

        model = stored.load("chest:1").model
        xml = next(p for p in files.values() if p.name == "model.xml")
        runtime = OpenVINORuntime(xml, "fp32", (32, 32, 1))
        np.testing.assert_allclose(
            runtime.predict(images[:8]), predict_scores(model, images[:8]), atol=1e-5
        )
        with pytest.raises(InvalidImageError, match=r"Received shape \(8, 28, 28, 1\)"):
            runtime.predict(np.zeros((8, 28, 28, 1), np.float32))

    def test_a_signal_is_still_handled_after_runtimes_come_and_go(self, converted):
        """Two runtimes whose lifetimes overlap, dropped in the order they were made, then a
        SIGTERM to the process, which handles it (as uvicorn does). With a Core per runtime,
        their CPU plugins left the main thread an unmapped alternate signal stack and the
        process died with SIGSEGV instead (returncode -11); one Core per process keeps it."""
        stored = converted  # add_openvino_runtime(stored, "chest:1"), made once
        files = stored.runtime_files(stored.verify("chest", 1), "openvino")
        xml = next(p for p in files.values() if p.name == "model.xml")
        script = textwrap.dedent(
            """
            import gc, os, signal, sys
            from pathlib import Path
            import numpy as np
            from radlens.models.runtime import OpenVINORuntime

            first = OpenVINORuntime(Path(sys.argv[1]), "fp32", (32, 32, 1))
            second = OpenVINORuntime(Path(sys.argv[1]), "fp32", (32, 32, 1))
            second.predict(np.zeros((1, 32, 32, 1), np.float32))
            del first
            gc.collect()
            del second
            gc.collect()
            handled = []
            signal.signal(signal.SIGTERM, lambda *_: handled.append(1))
            os.kill(os.getpid(), signal.SIGTERM)
            print(f"handled={len(handled)}")
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script, str(xml)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert result.stdout.split()[-1] == "handled=1"

    def test_streams_split_the_cores_and_run_concurrently(self, converted):
        from concurrent.futures import ThreadPoolExecutor

        stored = converted
        manifest = stored.verify("chest", 1)  # add_openvino_runtime(stored, "chest:1"), once
        files = stored.runtime_files(manifest, "openvino")
        xml = next(p for p in files.values() if p.name == "model.xml")
        images, _ = val_images(count=16)
        single = OpenVINORuntime(xml, "fp32", (32, 32, 1))
        double = OpenVINORuntime(xml, "fp32", (32, 32, 1), streams=2)
        assert int(double.compiled.get_property("NUM_STREAMS")) == 2
        expected = single.predict(images)
        with ThreadPoolExecutor(2) as pool:  # one infer request per thread
            results = list(pool.map(lambda _: double.predict(images), range(6)))
        for result in results:
            np.testing.assert_allclose(result, expected, atol=1e-6)
        with pytest.raises(ConfigurationError, match="streams"):
            OpenVINORuntime(xml, "fp32", (32, 32, 1), streams=0)

    @pytest.mark.parametrize("precision", ["fp32", "bf16"])
    def test_latency_model_gives_the_streams_scores_bit_for_bit(self, converted, precision, caplog):
        if precision == "bf16" and not bf16_supported():
            pytest.skip("this CPU has no bf16: the bf16 hint would run fp32, proving nothing")
        stored = converted
        manifest = stored.verify("chest", 1)  # add_openvino_runtime(stored, "chest:1"), once
        files = stored.runtime_files(manifest, "openvino")
        xml = next(p for p in files.values() if p.name == "model.xml")
        images, _ = val_images(count=96)
        before = OpenVINORuntime(xml, precision, (32, 32, 1), streams=2)  # one compiled model
        assert not before.latency and before.latency_compiled is None
        with caplog.at_level(logging.WARNING, logger="radlens.models.runtime"):
            served = OpenVINORuntime(xml, precision, (32, 32, 1), streams=2, latency=True)
        if served.latency:
            lat, tput = served.latency_compiled, served.compiled
            assert int(lat.get_property("NUM_STREAMS")) == 1
            assert str(lat.get_property("PERFORMANCE_HINT")) == "LATENCY"
            assert int(tput.get_property("NUM_STREAMS")) == 2
            assert str(lat.get_property("INFERENCE_PRECISION_HINT")) == str(
                tput.get_property("INFERENCE_PRECISION_HINT")
            )
        else:  # the probe found a difference: dropped, said so, alone runs on the streams
            assert "differed from the streams model's" in served.latency_note
            assert served.latency_note in caplog.text
        if precision == "bf16":  # what serves on a bf16 CPU: identical on every image tried
            assert served.latency, served.latency_note
        # kept or not, a lone image gets the streams model's scores, bit for bit
        for i in range(len(images)):
            np.testing.assert_array_equal(
                served.predict(images[i : i + 1], alone=True), before.predict(images[i : i + 1])
            )
        np.testing.assert_array_equal(served.predict(images), before.predict(images))
        # one stream is the latency mode already: no second model, alone is a no-op
        single = OpenVINORuntime(xml, precision, (32, 32, 1), latency=True)
        assert not single.latency and single.latency_compiled is None
        np.testing.assert_array_equal(
            single.predict(images[:1], alone=True), single.predict(images[:1])
        )

    def test_reconverting_replaces_the_old_files(self, stored):
        first = add_openvino_runtime(stored, "chest:1")
        second = add_openvino_runtime(stored, "chest:1")
        old_dir = Path(next(iter(first.runtimes["openvino"]["files"]))).parts[0]
        new_dir = Path(next(iter(second.runtimes["openvino"]["files"]))).parts[0]
        assert old_dir != new_dir
        version_dir = stored.root / "chest" / "1"
        assert not (version_dir / old_dir).exists() and (version_dir / new_dir).is_dir()
        assert recorded_parity(second, "fp32") is None  # converted without data

    def test_altered_or_missing_runtime_file(self, converted):
        stored = converted
        manifest = stored.verify("chest", 1)  # add_openvino_runtime(stored, "chest:1"), once
        files = stored.runtime_files(manifest, "openvino")
        next(p for p in files.values() if p.name == "model.xml").unlink()
        with pytest.raises(ModelCorruptError, match=r"model\.xml .*is missing"):
            stored.runtime_files(manifest, "openvino")
        with open(next(p for p in files.values() if p.name == "model.bin"), "ab") as fh:
            fh.write(b"\0")
        with pytest.raises(ModelCorruptError, match=r"sha256 of .*model\.bin"):
            stored.runtime_files(manifest, "openvino")

    def test_edited_parity_is_tamper(self, stored):
        images, labels = val_images(count=32)
        add_openvino_runtime(stored, "chest:1", images=images, labels=labels)
        path = stored.root / "chest" / "1" / "manifest.json"
        data = json.loads(path.read_text())
        data["runtimes"]["openvino"]["parity"]["fp32"]["n"] = 10_000  # looks better measured
        path.write_text(json.dumps(data))
        with pytest.raises(ModelTamperedError, match="field 'runtimes' changed"):
            stored.verify("chest", 1)

    def test_training_export_call_with_the_model_in_memory(self, stored):
        """What training's export adds after ModelRegistry.save: the model it holds, val arrays."""
        model = stored.load("chest:1").model
        images, labels = val_images(count=48)
        manifest = add_openvino_runtime(
            stored, "chest:1", model=model, images=images, labels=labels, data_note="val"
        )
        parity = recorded_parity(manifest, "fp32")
        assert parity is not None and parity.n == 48 and parity.flips == 0
        assert manifest.runtimes["openvino"]["parity"]["fp32"]["data"] == "val"

    def test_no_runtime_listed(self, stored):
        with pytest.raises(ModelNotFoundError, match="radlens models convert chest:1"):
            stored.runtime_files(stored.verify("chest", 1), "openvino")

    def test_a_failed_conversion_changes_nothing(self, stored, monkeypatch):
        from radlens.models import runtime as runtime_module

        before = (stored.root / "chest" / "1" / "manifest.json").read_bytes()

        def broken(model, out_dir):
            raise runtime_module.ModelStoreError("OpenVINO could not convert the model: boom")

        monkeypatch.setattr(runtime_module, "convert_to_openvino", broken)
        with pytest.raises(runtime_module.ModelStoreError, match="boom"):
            add_openvino_runtime(stored, "chest:1")
        assert (stored.root / "chest" / "1" / "manifest.json").read_bytes() == before
        assert sorted(p.name for p in (stored.root / "chest" / "1").iterdir()) == [
            "manifest.json",
            "model.keras",
        ]


def test_openvino_absent_is_a_clear_error(stored, monkeypatch):
    from radlens.models import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "openvino_version", lambda: None)
    with pytest.raises(RuntimeUnavailableError, match="openvino package is not installed"):
        add_openvino_runtime(stored, "chest:1")
    assert bf16_supported() is False
