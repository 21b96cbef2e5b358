"""Detector thresholds are configuration: read from the config file, checked, and all documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from hpcinsight.core.settings import ConfigError, load
from hpcinsight.streams.detectors import build, discover

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_settings_from_the_config_file_reach_the_detectors(tmp_path: Path) -> None:
    conf = tmp_path / "hpcinsight.toml"
    conf.write_text(
        '[detectors.job_underused]\nthreshold_pct = 20\noverrides = {"team:nlp" = 10.0}\n[detectors.gpu_outlier]\nk = 4\n'
    )
    settings = load({"HPCINSIGHT_CONFIG": str(conf)})
    by_kind = {d.kind: d for d in build(settings.detectors)}
    assert by_kind["job_underused"].config.threshold_pct == 20.0
    assert by_kind["job_underused"].config.threshold("nlp", None) == 10.0
    assert by_kind["gpu_outlier"].config.k == 4.0 and by_kind["gpu_outlier"].config.fire_after == 2


def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no detector nope; known:"):
        build({"nope": {}})
    with pytest.raises(ValueError, match="detector hang has no setting idle; its settings:"):
        build({"hang": {"idle": 3}})
    with pytest.raises(ValueError, match="detector hang: Expected `float`"):
        build({"hang": {"idle_pct": "five"}})
    conf = tmp_path / "bad.toml"
    conf.write_text("detectors = 3\n")
    with pytest.raises(ConfigError, match=r"\[detectors\]"):
        load({"HPCINSIGHT_CONFIG": str(conf)})


def test_every_detector_setting_is_in_the_configuration_reference() -> None:
    rows = set(re.findall(r"^\| `([a-z_]+)` \| `([a-z_0-9]+)` \|", REFERENCE.read_text(), flags=re.M))
    wanted = {(cls.kind, f.name) for cls in discover() for f in dataclasses.fields(cls.config_type)}
    assert wanted - rows == set(), "settings missing from the thresholds table of docs/configuration.md"
    assert rows - wanted == set(), "docs/configuration.md documents settings that do not exist"
