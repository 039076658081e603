"""Stated view positions (`--intended-view-positions`, `intended_view_positions`): a model
trained on PNG/JPEG films has no ViewPosition to survey, so before this only a statement
could make its gate refuse a lateral DICOM (QA round 70 measured the real RSNA chest CR
with ViewPosition LL passing such a model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.models.intended_use import from_record, violations
from radlens.training.config import TrainConfig
from radlens.training.data.intended import intended_use_for
from radlens.training.data.sources import open_source
from tests.training.conftest import tiny_config
from tests.training.data_fixtures import png_folder


def test_png_films_with_stated_views_give_a_gate_that_refuses_a_lateral(tmp_path: Path) -> None:
    source = open_source(str(png_folder(tmp_path / "films", n_per_class=3)))
    record = intended_use_for(source, source.examples, view_positions=["PA", "ap"])
    assert record["stated"]["view_positions"] == ["FRONTAL"]
    assert record["accepts"]["view_positions"] == ["FRONTAL"]
    gate = from_record(record)
    refused = violations({"ViewPosition": "LL"}, gate)
    assert [v.attribute for v in refused] == ["ViewPosition"], refused
    assert violations({"ViewPosition": "PA"}, gate) == []
    # unstated, PNG films gate no view (the behaviour QA 70 measured)
    unstated = from_record(intended_use_for(source, source.examples))
    assert violations({"ViewPosition": "LL"}, unstated) == []


def test_a_stated_view_no_training_film_has_stops_the_run(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    """The demo films are PA: a model stated for laterals would refuse every one of them."""
    from radlens.training.run import train

    config = tiny_config(tiny_demo_data, tmp_path, intended_view_positions=["LATERAL"])
    with pytest.raises(ConfigurationError) as info:
        train(config, verbose=0)
    message = str(info.value)
    assert "(view positions LATERAL) excludes all" in message, message
    assert "--intended-view-positions" in message, message


def test_an_unknown_view_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigurationError, match="sideways"):
        TrainConfig.from_dict({"data": str(tmp_path), "intended_view_positions": ["sideways"]})
    assert main(["train", "--data", str(tmp_path), "--intended-view-positions", "sideways"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "sideways" in err, err
