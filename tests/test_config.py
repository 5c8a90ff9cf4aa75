"""The config schema: defaults compose, bad values fail early naming the key."""

from __future__ import annotations

import os
import sys
import time

import pytest
import yaml

from pipeline.config.compose import compose, preset_overrides, to_dict, validate
from pipeline.errors import ConfigError
from pipeline.tracking.identity import training_identity
from tests.conftest import ROOT, path_overrides, run_module


def test_defaults_compose_and_mirror_the_lesson():
    """With no experiment: the lesson on any machine (experiment=cpu, a frozen Lite0 whose weights
    are installed); the course's Xception is experiment=lesson."""
    config = compose()
    assert config.data.image_size == [150, 150]
    assert config.model.name == "efficientnet_lite0" and not config.model.trainable_base
    assert config.train.batch_size == 32
    assert config.augmentation.name == "none" and config.augmentation.is_identity
    assert compose(["experiment=cpu"]) == config
    lesson = compose(["experiment=lesson"])
    assert lesson.model.name == "xception" and lesson.augmentation.name == "lesson"


def test_an_unknown_experiment_is_refused_listing_the_choices(tmp_path):
    from hydra.errors import MissingConfigException

    result = run_module("pipeline.train", "experiment=cpuu", *path_overrides(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: experiment=cpuu: there is no conf/experiment/cpuu.yaml; the options are: cpu, lesson, scratch "
        "(did you mean experiment=cpu?)"
    ]
    with pytest.raises(MissingConfigException, match="experiment/cpuu"):  # how DVC composes (dvc exp run -S)
        compose(["experiment=cpuu"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.split.fractions=[0.5,0.6,0.1]", "data.split.fractions"),
        ("data.image_size=[0,150]", "data.image_size"),
        ("augmentation.rotation_range=-5", "augmentation.rotation_range"),
        ("+augmentation.rotaton_range=3", "rotaton_range"),
        ("train.batch_size=abc", "train.batch_size"),
    ],
)
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
    assert yaml.safe_load(out.read_text()) == yaml.safe_load((ROOT / "params.yaml").read_text()), (
        "params.yaml is stale: regenerate it from conf/ (see README, 'Configuration')"
    )


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


@pytest.mark.parametrize("section", ["data", "augmentation", "model", "train", "tracking", "compare"])
def test_the_defaults_yaml_is_generated_from_the_dataclasses(section):
    """conf/schema/<section>.yaml, which Hydra and DVC compose, is the dataclass's defaults written
    out: equal to the generator's output, and composing to the dataclass's own values."""
    from omegaconf import OmegaConf

    from pipeline.config import reference
    from pipeline.config.schema import Config

    path = ROOT / "conf" / "schema" / f"{section}.yaml"
    assert path.read_text() == reference.schema_yaml(section, reference.schema_comments()), (
        "regenerate with: python -m pipeline.config.reference --write"
    )
    on_disk = OmegaConf.to_container(OmegaConf.load(path))
    expected = OmegaConf.to_container(OmegaConf.structured(getattr(Config(), section)))
    if section in reference.NAMED_BY_PRESET:
        expected["name"] = "???"  # every preset must name itself
    assert on_disk == expected


@pytest.mark.parametrize(
    "overrides, key, value",
    [
        (["augmentation.rotation_range=10"], "rotation_range", 10.0),
        (["augmentation=lesson", "augmentation.horizontal_flip=true"], "horizontal_flip", True),
        (["augmentation=mixup", "augmentation.random_erasing.probability=0.3"], "random_erasing", 0.3),
        (["model=residual_cnn", "model.trainable_base=false"], "trainable_base", False),
    ],
)
def test_every_schema_key_is_settable_on_every_preset(overrides, key, value):
    config = compose(overrides)
    section = config.model if overrides[0].startswith("model") else config.augmentation
    found = getattr(section, key)
    assert (found.probability if key == "random_erasing" else found) == value


def test_a_misspelt_key_is_refused_naming_the_right_one(tmp_path):
    result = run_module("pipeline.train", "augmentation.rotaton_range=10", *path_overrides(tmp_path))
    assert result.returncode == 2
    assert (
        "augmentation.rotaton_range" in result.stderr and "did you mean 'augmentation.rotation_range'" in result.stderr
    )
    assert "Traceback" not in result.stderr
    typo_group = run_module("pipeline.split", "augmentaton=lesson", *path_overrides(tmp_path))
    assert typo_group.returncode == 2 and "did you mean 'augmentation'" in typo_group.stderr


def test_a_renamed_key_is_refused_saying_its_new_name(tmp_path):
    from pipeline.config.cli import load_params

    old = tmp_path / "params.yaml"  # a params.yaml written before the rename
    old.write_text((ROOT / "params.yaml").read_text().replace("  placement: auto", "  device: model"))
    with pytest.raises(ConfigError, match="'augmentation.device' is now 'augmentation.placement'"):
        load_params(["--params", str(old)])
    with pytest.raises(ConfigError, match="'augmentation.device' is now 'augmentation.placement'"):
        load_params(["--params", str(ROOT / "params.yaml"), "augmentation.device=model"])


def test_params_file_takes_group_overrides(tmp_path):
    from pipeline.config.cli import load_params

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    config = load_params(
        [
            "--params",
            str(params),
            "model=residual_cnn",
            "augmentation=lesson",
            "augmentation.horizontal_flip=true",
            "train.epochs=3",
        ]
    )
    assert config.model.name == "residual_cnn" and config.model.weights is None
    assert config.augmentation.rotation_range == 30 and config.augmentation.horizontal_flip
    assert config.train.epochs == 3
    lesson = load_params(["--params", str(params), "experiment=lesson"])
    assert lesson.augmentation.name == "lesson" and lesson.train.epochs == 50
    # an experiment over a params file that chose another model: its model section, as Hydra composes it
    cpu = load_params(["--params", str(params), "model=residual_cnn", "train.epochs=7", "experiment=cpu"])
    assert (cpu.model.name, cpu.model.weights, cpu.model.dropout) == ("efficientnet_lite0", "imagenet", 0.5)
    assert cpu.data.image_size == [150, 150] and cpu.train.patience == 10
    assert cpu.train.epochs == 7  # as with Hydra: a key set on the command line wins over the experiment's 60
    with pytest.raises(ConfigError, match="the options are: .*residual_cnn"):
        load_params(["--params", str(params), "model=resnet9000"])
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        load_params(["--params", str(params), "train.epoch=3"])


@pytest.mark.parametrize(
    "content, complaint",
    [
        ("", "is empty"),
        ("data:\n  source: [unclosed\n", "not valid YAML at line"),
        ("- just\n- a list\n", "not a mapping"),
    ],
)
def test_broken_or_empty_params_file_gives_one_clear_line(tmp_path, content, complaint):
    params = tmp_path / "params.yaml"
    params.write_text(content)
    result = run_module("pipeline.split", "--params", str(params))
    assert result.returncode == 2
    assert complaint in result.stderr and str(params) in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_an_augmenting_none_is_never_labelled_as_the_plain_baseline():
    assert compose([]).augmentation.label == "none"
    assert compose(["augmentation.rotation_range=10"]).augmentation.label == "custom"
    assert compose(["augmentation=lesson", "augmentation.vertical_flip=false"]).augmentation.label == "lesson"


def test_ablate_names_an_operation_the_preset_uses():
    with pytest.raises(
        ConfigError,
        match="preset lesson does not use brightness.*its operations: rotation, "
        "width_shift, height_shift, shear, zoom, vertical_flip",
    ):
        compose(["augmentation=lesson", "augmentation.ablate=brightness"])
    with pytest.raises(ConfigError, match="augmentation.ablate: must be none or an operation"):
        compose(["augmentation=lesson", "augmentation.ablate=rotate"])
    assert compose(["augmentation=lesson", "augmentation.ablate=none"]).augmentation.ablate is None
    applied = compose(["augmentation=lesson", "augmentation.ablate=zoom"])
    assert (applied.augmentation.name, applied.augmentation.zoom_range) == ("lesson-no-zoom", 0.0)
    again = validate(to_dict(applied))  # a logged config.yaml validates to the same config
    assert again.augmentation == applied.augmentation
    # the ablated run is another configuration than the full preset
    assert training_identity(applied, "x") != training_identity(compose(["augmentation=lesson"]), "x")


@pytest.mark.parametrize("key", ["paths.models_dir", "paths.split_dir", "paths.reports_dir", "data.download_dir"])
def test_an_output_folder_under_a_file_is_refused_naming_the_key(tmp_path, key):
    from pipeline.config.cli import check_output_paths

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as error:
        check_output_paths(compose([f"{key}={blocker}/x"]))
    assert str(error.value) == (
        f"{key}={blocker}/x: {blocker} is a file, not a folder, so nothing can be written "
        f"there. Choose another {key}, or move that file away."
    )


def test_a_path_error_is_one_line_from_the_command(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_module(
        "pipeline.split", f"paths.split_dir={blocker}/x", f"data.source={tmp_path}", f"hydra.run.dir={tmp_path}/h"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: paths.split_dir={blocker}/x: {blocker} is a file")


def test_a_folder_where_the_model_file_goes_is_refused_before_training(tmp_path):
    from pipeline.config.cli import check_output_paths

    (tmp_path / "models" / "model.keras").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"model.keras is a folder"):
        check_output_paths(compose([f"paths.models_dir={tmp_path}/models"]))


def test_the_configuration_reference_is_generated_from_the_schema():
    from pipeline.config.reference import reference

    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == reference(), (
        "docs/configuration.md is stale: python -m pipeline.config.reference > docs/configuration.md"
    )
    # every key of the schema, documented: a field added without a comment shows up here
    rows = [line for line in written.splitlines() if line.startswith("| `")]
    assert len(rows) > 60 and all(not line.endswith("|  |") for line in rows)
    assert "| `train.patience` | int | `5` |" in written and "- `experiment`: `cpu`, `lesson`, `scratch`" in written


def test_a_shift_of_more_pixels_than_the_image_is_refused_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"augmentation\.width_shift_range: 5000 pixels moves every image out of its 150-pixel width"
    ):
        compose(["augmentation.width_shift_range=5000"])
    with pytest.raises(ConfigError, match=r"augmentation\.height_shift_range: 96 pixels .* 96-pixel height"):
        compose(["augmentation.height_shift_range=96", "data.image_size=[96,128]"])
    assert compose(["augmentation.width_shift_range=149"]).augmentation.width_shift_range == 149  # inside the frame
    assert compose(["augmentation.width_shift_range=0.9"]).augmentation.width_shift_range == 0.9  # a fraction


def test_a_title_names_the_preset_and_what_the_command_line_changed_in_it():
    assert preset_overrides(compose(["augmentation=lesson"]).augmentation) == []
    assert preset_overrides(compose(["augmentation=lesson", "augmentation.ablate=vertical_flip"]).augmentation) == []
    changed = compose(["augmentation=lesson", "augmentation.rotation_range=10", "augmentation.zoom_range=[0.8,1.2]"])
    assert preset_overrides(changed.augmentation) == [
        "augmentation.rotation_range=10",
        "augmentation.zoom_range=[0.8, 1.2]",
    ]
    assert preset_overrides(compose(["augmentation.width_shift_range=5"]).augmentation) == [
        "augmentation.width_shift_range=5"
    ]


def test_sigterm_outside_a_training_stops_in_one_line(tmp_path, capsys):
    """evaluate, compare, split: SIGTERM (a scheduler's stop) ends the command with one line and
    exit 143, not silently; SIGINT says Ctrl-C."""
    import signal

    from pipeline.config.cli import stage_entry

    def slow_stage(config):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered while the stage works
        time.sleep(10)
        return "not reached"

    def interrupted_stage(config):
        raise KeyboardInterrupt  # what Python raises on Ctrl-C

    saved = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["stage", "hydra/job_logging=none", "hydra/hydra_logging=none", f"hydra.run.dir={tmp_path}"]
    try:
        with pytest.raises(SystemExit) as stopped:
            stage_entry(slow_stage)()
        assert stopped.value.code == 143
        assert capsys.readouterr().err.strip().splitlines()[-1] == "stopped: received SIGTERM"
        with pytest.raises(SystemExit) as interrupted:
            stage_entry(interrupted_stage)()
        assert interrupted.value.code == 130
        assert capsys.readouterr().err.strip().splitlines()[-1] == "stopped: Ctrl-C"
    finally:
        sys.argv = saved[0]
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    assert signal.getsignal(signal.SIGTERM) is saved[1]  # the command's handler does not outlive it


def test_each_command_s_help_says_what_it_does_and_lists_only_the_keys_it_reads():
    train = run_module("pipeline.train", "--help", "augmentation=lesson")
    assert train.returncode == 0, train.stderr
    lines = train.stdout.splitlines()
    assert lines[0] == "usage: python -m pipeline.train [-m] [group=option ...] [key=value ...]"
    assert lines[2].startswith("Stage `train`: fit a classifier")
    assert "python -m pipeline.train -m experiment=cpu augmentation=none,lesson" in train.stdout  # examples first
    keys = listed_keys(train.stdout)
    assert "augmentation.rotation_range" in keys and "train.epochs" in keys and "compare.baseline" not in keys
    assert "  augmentation.rotation_range=30.0 " in train.stdout  # the value with this command line's preset
    assert "cli is powered by Hydra" not in train.stdout

    compare = run_module("pipeline.compare", "--help")
    assert compare.returncode == 0 and compare.stdout.splitlines()[2].startswith("Command `compare`")
    assert "  compare.baseline=none " in compare.stdout
    keys = listed_keys(compare.stdout)
    assert "compare.metric" in keys and not any(k.startswith(("augmentation.", "model.name")) for k in keys)

    rounds = run_module("pipeline.rounds", "--help")  # a command that runs sweeps itself offers no -m
    assert (
        rounds.returncode == 0
        and rounds.stdout.splitlines()[0] == "usage: python -m pipeline.rounds [group=option ...] [key=value ...]"
    )
    assert "  compare.rounds=null " in rounds.stdout and "-m (one job" not in rounds.stdout


def listed_keys(help_text: str) -> list[str]:
    """The keys a --help lists: its lines `  key=value  what it does`."""
    lines = help_text[help_text.index("The keys it reads") :].splitlines()
    return [line.split("=")[0].strip() for line in lines if line.startswith("  ") and "=" in line.split()[0]]


def test_a_key_written_as_a_flag_gets_its_key_value_form():
    result = run_module("pipeline.train", "--epochs", "3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --epochs is not an option of this command: settings are written key=value, e.g. train.epochs=3. "
        "--help lists the keys it reads."
    ]


def test_every_target_in_conf_is_one_hydra_1_4_would_instantiate():
    """Hydra 1.4 instantiates only whitelisted targets; cli.TRUSTED_TARGETS must cover every `_target_`
    in conf/ (its patterns: a dotted name, or a prefix ending in `.*`)."""
    from pipeline.config.cli import TRUSTED_TARGETS, hydra_main_options

    targets = [
        line.split("_target_:")[1].strip()
        for path in (ROOT / "conf").rglob("*.yaml")
        for line in path.read_text().splitlines()
        if "_target_:" in line
    ]
    assert {"pipeline.config.sweeps.SweepJobs", "optuna.samplers.TPESampler"} <= set(targets)
    for target in targets:
        assert any(
            target.startswith(pattern[:-1]) if pattern.endswith(".*") else target == pattern
            for pattern in TRUSTED_TARGETS
        ), f"{target} (conf/) is not in cli.TRUSTED_TARGETS: Hydra 1.4 would refuse to instantiate it"
    assert hydra_main_options("1.3.8") == {"version_base": "1.3"}
    assert hydra_main_options("1.4.0rc3") == {"execution_whitelist": TRUSTED_TARGETS}
