"""`radlens models ood` on a version whose OpenVINO IR was converted before the detector (QA 92).

Such an IR returns the class scores alone (or the features of another detector's layers), so
OpenVINO serving takes the new detector's features from a second Keras forward pass per batch
(app/predictor.py, QA 84) until the version is converted again: `models ood` says so in one
line naming the command, and stays quiet once the IR returns those features. Its layers line
is worded as `radlens models show`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.runtime import openvino_version
from tests.training.test_qa74_ood_layers import save_resnet

pytestmark = pytest.mark.skipif(openvino_version() is None, reason="OpenVINO is not installed")

HINT = "note: res:1's OpenVINO model was converted before this detector"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.training.data.demo import write_demo_dataset

    out = tmp_path_factory.mktemp("qa92-demo") / "data"
    write_demo_dataset(out, n_per_class=12, size=32, seed=0, val_fraction=0.15, test_fraction=0.15)
    return out


def _lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


def test_models_ood_says_to_reconvert_an_ir_without_the_detectors_features(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.models.runtime import add_openvino_runtime

    store = tmp_path / "store"
    registry = save_resnet(store)
    add_openvino_runtime(registry, "res:1")  # before any detector: the scores alone
    args = ["models", "ood", "res", "--data", str(demo_data), "--store", str(store)]

    assert main(args) == 0
    out = capsys.readouterr().out
    (hint,) = _lines(out, "note: res:1's OpenVINO")
    assert hint.startswith(HINT) and "second (Keras) forward pass" in hint
    assert hint.endswith(f"convert it again: radlens models convert res:1 --data {demo_data}")
    # the layers line is the one `radlens models show` prints for the same detector
    (layers,) = _lines(out, "OOD layers: ")
    assert layers == "OOD layers: the last convolutional layer"
    assert main(["models", "show", "res:1", "--store", str(store)]) == 0
    assert _lines(capsys.readouterr().out, "OOD layers: ") == [layers]

    # --json: stdout stays one JSON document, the hint goes to stderr
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert "layers" not in json.loads(captured.out)
    assert _lines(captured.err, "note: res:1's OpenVINO") == [hint]

    # converted again with the detector attached: the IR returns its features, no hint
    assert main(["models", "convert", "res:1", "--store", str(store)]) == 0
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "OpenVINO" not in out and out.startswith("added an OOD detector to res:1")

    # a detector refitted on other layers than the IR's features: the hint again
    assert main([*args, "--layers", "conv2_block3_out,conv5_block3_out"]) == 0
    out = capsys.readouterr().out
    assert len(_lines(out, HINT)) == 1
    (layers,) = _lines(out, "OOD layers: ")
    assert layers.startswith(
        "OOD layers: backbone/conv2_block3_out, backbone/conv5_block3_out, one detector each"
    )
    assert main(["models", "show", "res:1", "--store", str(store)]) == 0
    assert _lines(capsys.readouterr().out, "OOD layers: ") == [layers]


def test_no_hint_without_an_ir(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    save_resnet(store)
    assert main(["models", "ood", "res", "--data", str(demo_data), "--store", str(store)]) == 0
    captured = capsys.readouterr()
    assert "OpenVINO" not in captured.out + captured.err


def test_an_altered_ir_gives_no_hint_and_the_detector_is_attached(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.models.runtime import IR_XML, add_openvino_runtime

    store = tmp_path / "store"
    registry = save_resnet(store)
    add_openvino_runtime(registry, "res:1")
    files = registry.runtime_files(registry.verify("res", 1), "openvino")
    (xml,) = [path for path in files.values() if path.name == IR_XML]
    xml.write_bytes(xml.read_bytes() + b"\n")  # fails its sha256 in the manifest
    assert main(["models", "ood", "res", "--data", str(demo_data), "--store", str(store)]) == 0
    captured = capsys.readouterr()
    assert "OpenVINO" not in captured.out + captured.err
    assert captured.out.startswith("added an OOD detector to res:1")
    assert registry.ood_detector_file(registry.verify("res", 1)) is not None
