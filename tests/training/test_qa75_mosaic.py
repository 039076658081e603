"""QA 75: training skips a Siemens mosaic with the reason the service refuses it for (it was
trained on as one picture of many tiled slices)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radlens.training.data.sources import drop_undecodable, open_data
from tests.models.test_qa75_mosaic import mosaic_bytes
from tests.training.data_fixtures import random_gray, write_png


def test_a_mosaic_in_a_class_folder_is_skipped_with_why(tmp_path: Path) -> None:
    rng = np.random.default_rng(75)
    for label in ("normal", "abnormal"):
        for i in range(3):
            write_png(tmp_path / label / f"{i}.png", random_gray(rng))
    (tmp_path / "abnormal" / "mosaic.dcm").write_bytes(mosaic_bytes())
    kept = drop_undecodable(open_data(tmp_path))
    assert not any(e.key.endswith("mosaic.dcm") for e in kept.examples)
    (skip,) = [s for s in kept.skipped if s.path.endswith("mosaic.dcm")]
    assert "Siemens mosaic" in skip.reason and "separate instances" in skip.reason
    assert len(kept.examples) == 6
