"""The config schema: defaults compose, bad values fail early naming the key."""

from __future__ import annotations

import os

import pytest
import yaml

from pipeline.config import ConfigError, compose, validate
from tests.conftest import ROOT, path_overrides, run_module


def test_defaults_compose_and_mirror_the_lesson():
    config = compose()
    assert config.data.image_size == [150, 150]
    assert config.model.name == "xception"
    assert config.train.batch_size == 32
    assert config.augmentation.name == "none" and config.augmentation.is_identity


@pytest.mark.parametrize("override, key", [
    ("data.split.fractions=[0.5,0.6,0.1]", "data.split.fractions"),
    ("data.image_size=[0,150]", "data.image_size"),
    ("augmentation.rotation_range=-5", "augmentation.rotation_range"),
    ("+augmentation.rotaton_range=3", "rotaton_range"),
    ("train.batch_size=abc", "train.batch_size"),
])
def test_bad_config_fails_before_work_and_names_the_key(tmp_path, override, key):
    result = run_module("pipeline.split", override, *path_overrides(tmp_path))
    assert result.returncode != 0
    assert key in result.stderr, result.stderr
    assert not (tmp_path / "split").exists()  # no work was done


def test_validate_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as error:
        validate({"augmentation": {"zoom_range": 1.5, "fill_mode": "mirror"}, "seed": -1})
    text = str(error.value)
    assert "augmentation.zoom_range" in text and "augmentation.fill_mode" in text and "seed" in text


def test_zoom_range_accepts_number_or_pair():
    assert validate({"augmentation": {"zoom_range": 0.1}}).augmentation.zoom_bounds() == pytest.approx((0.9, 1.1))
    assert validate({"augmentation": {"zoom_range": [0.8, 1.3]}}).augmentation.zoom_bounds() == (0.8, 1.3)


def test_committed_params_yaml_is_the_composition_of_conf_defaults(tmp_path):
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(str(out), str(ROOT / "conf"), None, "config", str(ROOT), [])
    assert yaml.safe_load(out.read_text()) == yaml.safe_load((ROOT / "params.yaml").read_text()), \
        "params.yaml is stale: regenerate it from conf/ (see README, 'Configuration')"


def test_every_preset_and_experiment_composes():
    for preset in sorted(p.stem for p in (ROOT / "conf" / "augmentation").glob("*.yaml")):
        assert compose([f"augmentation={preset}"]).augmentation.name == preset
    for experiment in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        compose([f"experiment={experiment}"])


def test_params_file_mode_applies_overrides_and_validates(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    bad = run_module("pipeline.split", "--params", str(params), "data.split.fractions=[0.9,0.9,0.1]")
    assert bad.returncode != 0 and "data.split.fractions" in bad.stderr
    assert os.path.exists(params)
