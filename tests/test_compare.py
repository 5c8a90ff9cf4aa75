"""The seed-aware comparison: runs with known metrics in a real MLflow store -> exact means,
intervals (checked against scipy's own t tests) and verdicts; the report files and run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats

from pipeline.config.compose import compose
from pipeline.errors import TrackingError
from pipeline.study import compare
from pipeline.study.grouping import group_runs, varied_settings
from pipeline.study.records import RunSummary
from pipeline.study.seed_statistics import crossed_t
from pipeline.study.verdicts import compare_with_baseline
from tests.conftest import make_image, run_in_process

# preset -> {seed: (best_val_accuracy, test_accuracy)}
KNOWN = {
    "none": {"1": (0.80, 0.78), "2": (0.82, 0.80), "3": (0.81, 0.79)},
    "lesson": {"1": (0.84, 0.82), "2": (0.85, 0.83), "3": (0.83, 0.84)},  # paired, clearly better
    "cutmix": {"1": (0.86, 0.85), "2": (0.87, 0.86), "3": (0.88, 0.87)},  # better still, but not converged
    "strong": {"4": (0.71, 0.70), "5": (0.73, 0.72), "6": (0.72, 0.74)},  # other seeds: Welch, worse
    "mixup": {"1": (0.82, 0.80), "2": (0.81, 0.79), "3": (0.80, 0.80)},  # straddles 0
    "light": {"1": (0.83, 0.81)},  # one seed only
}


def log_known_runs(uri: str, experiment: str = "augmentation", lr_schedule: str = "constant") -> None:
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    for preset, seeds in KNOWN.items():
        for seed, (val, test) in seeds.items():
            run = client.create_run(
                experiment_id, run_name=f"{preset}-{seed}", tags={"augmentation": preset, "seed": seed}
            )
            params = {
                "model.name": "residual_cnn",
                "seed": seed,
                "augmentation.rotation_range": "0.0" if preset == "none" else "30.0",
                "train.epochs": "4",
                "train.patience": "1",
                "train.lr_schedule": lr_schedule,
            }
            still_improving = preset == "cutmix"  # its best epoch is its last
            now_ms = int(time.time() * 1000)
            fractions = (0.5, 0.9, 0.98, 1.0) if still_improving else (0.5, 0.9, 1.0, 0.98)
            curves = [
                Metric(key, value, now_ms, step)
                for step, fraction in enumerate(fractions, start=1)
                for key, value in (("val_accuracy", val * fraction), ("val_loss", 2.0 - val * fraction))
            ]
            finals = {
                "best_val_accuracy": val,
                "test_accuracy": test,
                "test_balanced_accuracy": test - 0.05,  # a class that is often missed
                "best_epoch": 4 if still_improving else 3,
            }
            client.log_batch(
                run.info.run_id,
                metrics=curves + [Metric(key, value, now_ms, 0) for key, value in finals.items()],
                params=[Param(key, value) for key, value in params.items()],
            )
            client.set_terminated(run.info.run_id, "FINISHED")
    crashed = client.create_run(experiment_id, tags={"augmentation": "lesson", "seed": "9"})
    client.log_metric(crashed.info.run_id, "test_accuracy", 0.10)
    client.set_terminated(crashed.info.run_id, "FAILED")


def test_means_intervals_and_verdicts_are_exact(tmp_path, store_uri):
    uri = store_uri
    log_known_runs(uri)
    report = compare.run(compose([f"tracking.uri={uri}", f"paths.reports_dir={tmp_path}/reports"]))

    assert report["metric"] == "test_accuracy"  # every run was evaluated
    assert report["runs"] == 16 and report["runs_left_out"] == 1  # the FAILED run is not averaged in
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == set(KNOWN)  # rotation_range follows the preset: no extra grouping
    none = groups["none"]
    assert none["runs"] == 3 and none["seeds"] == "1,2,3"
    assert none["best_val_accuracy_mean"] == pytest.approx(0.81, abs=1e-12)
    assert none["best_val_accuracy_std"] == pytest.approx(0.01, abs=1e-12)
    assert none["test_accuracy_mean"] == pytest.approx(0.79, abs=1e-12)
    assert none["best_epoch_mean"] == 3
    assert math.isnan(groups["light"]["test_accuracy_std"])  # one run has no spread

    def test_values(preset):
        return [KNOWN[preset][s][1] for s in sorted(KNOWN[preset])]

    diffs = {d["group"]: d for d in report["differences"]}
    lesson = diffs["lesson"]
    expected = stats.ttest_rel(test_values("lesson"), test_values("none")).confidence_interval(0.95)
    assert lesson["method"] == "paired over 3 seeds"
    assert lesson["mean"] == pytest.approx(0.04, abs=1e-12)
    assert (lesson["t_low"], lesson["t_high"]) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert lesson["per_seed"] == pytest.approx({"1": 0.04, "2": 0.03, "3": 0.05})
    assert lesson["p_value"] == pytest.approx(2 / 8)  # all three seeds agree: the smallest p 3 seeds allow
    assert lesson["probability_of_improvement"] == 1.0
    # the bootstrap of 3 points stays within them
    assert 0.03 - 1e-12 <= lesson["bootstrap_low"] <= lesson["bootstrap_high"] <= 0.05 + 1e-12
    # Holm over the 4 tested comparisons (light has no test), on the t-tests' p
    raw = {
        "lesson": stats.ttest_rel(test_values("lesson"), test_values("none")).pvalue,
        "cutmix": stats.ttest_rel(test_values("cutmix"), test_values("none")).pvalue,
        "strong": stats.ttest_ind(test_values("strong"), test_values("none"), equal_var=False).pvalue,
        "mixup": stats.ttest_rel(test_values("mixup"), test_values("none")).pvalue,
    }
    order = sorted(raw, key=raw.get)
    assert order == ["cutmix", "strong", "lesson", "mixup"]
    holm = {name: max(min(1, (4 - j) * raw[order[j]]) for j in range(order.index(name) + 1)) for name in raw}
    for name in raw:
        assert diffs[name]["t_p_value"] == pytest.approx(raw[name], rel=1e-9)
        assert diffs[name]["p_adjusted"] == pytest.approx(holm[name], rel=1e-9)
        assert diffs[name]["family_size"] == 4
    assert holm["lesson"] == pytest.approx(2 * raw["lesson"]) and holm["lesson"] < 0.05
    # lesson ranks third of 4: its verdict interval is drawn at 1 - 0.05/2
    assert lesson["verdict_confidence"] == pytest.approx(0.975)
    widened = stats.ttest_rel(test_values("lesson"), test_values("none")).confidence_interval(0.975)
    # the verdict's interval: the union of the t and bootstrap intervals at that level
    assert lesson["low"] == pytest.approx(widened.low, abs=1e-12) and lesson["high"] == pytest.approx(widened.high)
    assert widened.low < lesson["t_low"]
    assert lesson["verdict"] == "keep" and "Holm over 4 comparisons" in lesson["reason"]
    cutmix = diffs["cutmix"]  # its interval is above 0, but its runs were still improving
    assert cutmix["low"] > 0 and cutmix["p_adjusted"] < 0.05
    assert cutmix["verdict"] == "not converged" and "raise train.epochs" in cutmix["reason"]
    assert len(cutmix["not_converged"]) == 3

    strong = diffs["strong"]
    expected = stats.ttest_ind(test_values("strong"), test_values("none"), equal_var=False).confidence_interval(0.95)
    assert strong["method"] == "unpaired (Welch) over 3 and 3 runs"
    assert strong["mean"] == pytest.approx(-0.07, abs=1e-12)
    assert (strong["t_low"], strong["t_high"]) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert strong["p_value"] == pytest.approx(2 / 20)  # of the C(6,3) = 20 splits, only the observed one and its mirror
    assert strong["probability_of_improvement"] == 0.0
    assert strong["verdict_confidence"] == pytest.approx(1 - 0.05 / 3)
    assert strong["verdict"] == "drop"

    mixup = diffs["mixup"]  # test accuracy differences +0.02, -0.01, +0.01: mean 0.00667, sd 0.01528
    assert mixup["verdict"] == "inconclusive" and mixup["low"] < 0 < mixup["high"]
    assert mixup["spread"] == pytest.approx(
        math.sqrt(((0.02 - 0.02 / 3) ** 2 + (-0.01 - 0.02 / 3) ** 2 + (0.01 - 0.02 / 3) ** 2) / 2), abs=1e-12
    )
    assert mixup["seeds_needed"] > 5 and mixup["seeds_needed_1pt"] < mixup["seeds_needed"]
    assert f"about {mixup['seeds_needed']} seeds would resolve a 0.67-point gain" in mixup["reason"]
    light = diffs["light"]
    assert light["verdict"] == "inconclusive" and light["low"] is None
    assert "no repeats" in light["reason"] and "measured on seed 1 alone" in light["reason"]
    assert light["mean"] == pytest.approx(0.81 - 0.78, abs=1e-12)  # on seed 1, not against none's mean (0.79)

    reports = tmp_path / "reports"
    markdown = (reports / "comparison.md").read_text()
    assert "| cutmix | 3 | 1,2,3 | 87.00 ± 1.00 | 86.00 ± 1.00 | 81.00 ± 1.00 | 4.0 | 3 of 3 |" in markdown
    assert "| none | 3 | 1,2,3 | 81.00 ± 1.00 | 79.00 ± 1.00 | 74.00 ± 1.00 | 3.0 | 0 of 3 |" in markdown
    assert "**keep**" in markdown and "**drop**" in markdown and "**not converged**" in markdown
    assert "no repeats" in markdown
    assert "cutmix: 3 of 3 runs had their best epoch within" in markdown and "none: " not in markdown
    assert "fewer than 5 seeds" in markdown
    mixup_row = next(line for line in markdown.splitlines() if line.startswith("| mixup | none |"))
    assert f"| {mixup['seeds_needed']} / {mixup['seeds_needed_1pt']} |" in mixup_row  # the advice, in every row
    written = {d["group"]: d["verdict"] for d in json.loads((reports / "comparison.json").read_text())["differences"]}
    assert written == {  # as worked out above, for scripts too
        "cutmix": "not converged",
        "lesson": "keep",
        "light": "inconclusive",
        "mixup": "inconclusive",
        "strong": "drop",
    }
    assert (reports / "comparison.png").stat().st_size > 10_000

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("augmentation-comparisons")  # not among the training runs
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    logged = client.search_runs([experiment.experiment_id], "tags.run_kind = 'comparison'")
    assert len(logged) == 1 and logged[0].data.tags["compared_experiment"] == "augmentation"
    # the answer on the comparison run itself: verdicts as tags, figures in points, a description
    tags, metrics = logged[0].data.tags, logged[0].data.metrics
    assert tags["verdict.lesson"] == "keep" and tags["verdict.cutmix"] == "not converged"
    assert metrics["difference/lesson"] == pytest.approx(4.0)
    assert metrics["interval_low/lesson"] == pytest.approx(100 * lesson["low"])
    assert metrics["interval_high/lesson"] == pytest.approx(100 * lesson["high"])
    assert metrics["holm_p/lesson"] == pytest.approx(lesson["p_adjusted"])
    description = tags["mlflow.note.content"]
    assert (
        f"- **lesson** vs none: **keep**, +4.00 points [{100 * lesson['low']:+.2f}, {100 * lesson['high']:+.2f}] "
        "(paired over 3 seeds)" in description
    )
    training = client.get_experiment_by_name("augmentation").experiment_id
    compared = client.search_runs([training], "attributes.status = 'FINISHED'")
    assert len(compared) == 16 and set(tags["compared_runs"].split(",")) == {r.info.run_id for r in compared}
    for run in compared:  # each a link the UI opens
        assert f"(#/experiments/{training}/runs/{run.info.run_id}?workflowType=machine_learning)" in description
    assert {a.path for a in client.list_artifacts(logged[0].info.run_id)} == {
        "comparison.md",
        "comparison.png",
        "comparison.json",
        "class_effects.png",
        "affinity_diversity.png",
    }
    # A second comparison does not count the first one as a training run.
    again = compare.run(compose([f"tracking.uri={uri}", f"paths.reports_dir={tmp_path}/again"]))
    assert again["runs"] == 16


def test_validation_accuracy_is_used_before_evaluate(tmp_path, store_uri):
    uri = store_uri
    log_known_runs(uri)
    report = compare.run(
        compose(
            [
                f"tracking.uri={uri}",
                f"paths.reports_dir={tmp_path}/r",
                "compare.metric=best_val_accuracy",
                "compare.confidence=0.9",
                "compare.filter=\"tags.augmentation LIKE '%e%'\"",
            ]
        )
    )
    assert report["metric"] == "best_val_accuracy" and report["runs"] == 6  # none and lesson match '%e%'
    (lesson,) = report["differences"]
    vals = [[KNOWN[p][s][0] for s in "123"] for p in ("lesson", "none")]
    expected = stats.ttest_rel(*vals).confidence_interval(0.9)
    assert (lesson["t_low"], lesson["t_high"]) == pytest.approx((expected.low, expected.high), abs=1e-12)


def summary(preset, seed, **params):
    return RunSummary(f"{preset}{seed}", preset, seed, {"seed": seed, **params}, {"test_accuracy": 0.5})


def test_other_varied_settings_make_their_own_groups():
    runs = [
        summary(
            p,
            s,
            **{
                "model.name": m,
                "augmentation.rotation_range": "30" if p == "lesson" else "0",
                "tracking.uri": f"file{s}",
            },
        )
        for p in ("none", "lesson")
        for s in ("1", "2")
        for m in ("residual_cnn", "xception")
    ]
    assert varied_settings(runs) == ["model.name"]  # not rotation (the preset's), not seed/tracking
    groups = group_runs(runs)
    assert [(g.preset, g.settings["model.name"], len(g.runs)) for g in groups] == [
        ("lesson", "residual_cnn", 2),
        ("none", "residual_cnn", 2),
        ("lesson", "xception", 2),
        ("none", "xception", 2),
    ]


def test_paired_interval_needs_the_same_seeds():
    runs = [summary("none", "1"), summary("lesson", "1")]
    none, lesson = sorted(group_runs(runs), key=lambda g: g.preset != "none")
    result = compare_with_baseline(lesson, none, "test_accuracy", 0.95)
    assert result.verdict == "inconclusive" and result.low is None and result.mean == 0.0
    other_seed = sorted(group_runs([summary("none", "1"), summary("lesson", "2")]), key=lambda g: g.preset != "none")
    unshared = compare_with_baseline(other_seed[1], other_seed[0], "test_accuracy", 0.95)
    assert unshared.low is None and "no seed in common" in unshared.reason


def test_compare_explains_an_empty_or_missing_experiment(tmp_path, store_uri):
    uri = store_uri
    settings = [f"tracking.uri={uri}", f"paths.reports_dir={tmp_path}/r"]
    with pytest.raises(TrackingError, match="does not exist") as missing:
        compare.run(compose([*settings, "tracking.experiment=nothing-here"]))
    assert "train first" in str(missing.value)
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("empty")
    with pytest.raises(TrackingError, match="No FINISHED training runs"):
        compare.run(compose([*settings, "tracking.experiment=empty"]))
    with pytest.raises(TrackingError, match="compare.filter"):
        compare.run(compose([*settings, "tracking.experiment=empty", "compare.filter=this is not a filter"]))
    assert not (tmp_path / "r" / "comparison.md").exists()


def test_runs_annealed_to_their_cap_are_told_to_use_a_constant_schedule(tmp_path, store_uri):
    """Under warmup_cosine a still-learning run peaks at the end of whatever cap it gets, so
    "raise train.epochs" would never bring a verdict: the advice names the constant schedule."""
    uri = store_uri
    log_known_runs(uri, lr_schedule="warmup_cosine")
    report = compare.run(
        compose([f"tracking.uri={uri}", f"paths.reports_dir={tmp_path}/reports", "compare.affinity=false"])
    )

    diffs = {d["group"]: d for d in report["differences"]}
    cutmix = diffs["cutmix"]
    assert cutmix["verdict"] == "not converged" and cutmix["annealed"]
    assert "train.lr_schedule=constant" in cutmix["reason"] and "raise train.epochs" not in cutmix["reason"]
    assert diffs["lesson"]["verdict"] == "keep"  # converged runs keep their verdict whatever the schedule
    markdown = (tmp_path / "reports" / "comparison.md").read_text()
    assert "cutmix: 3 of 3 runs had their best epoch" in markdown
    assert "train with train.lr_schedule=constant" in markdown


def test_curves_band_over_seeds():
    from pipeline.study.figures import mean_curve

    runs = [
        RunSummary("a", "none", "1", {}, {}, {"val_accuracy": [0.2, 0.4, 0.6]}),
        RunSummary("b", "none", "2", {}, {}, {"val_accuracy": [0.4, 0.6]}),
    ]  # stopped early
    epochs, mean, std, reached = mean_curve(runs, "val_accuracy")
    assert list(epochs) == [1, 2, 3] and list(reached) == [2, 2, 1]  # the figure draws epoch 3 dotted
    np.testing.assert_allclose(mean, [0.3, 0.5, 0.6])
    np.testing.assert_allclose(std, [np.std([0.2, 0.4], ddof=1), np.std([0.4, 0.6], ddof=1), 0.0])


def test_point_labels_stay_readable_beside_their_points():
    """An ablation's operations often sit close together in the affinity/diversity scatter:
    every name must land inside the axes, on no marker and no other name, next to its point."""
    import matplotlib.pyplot as plt

    from pipeline.study.figures import _label_points

    figure, ax = plt.subplots(figsize=(6.4, 4.8))
    points = [(0.945, 1.015), (0.958, 1.023), (0.965, 0.994), (0.944, 0.954), (0.95, 1.0), (0.85, 1.53)]
    names = ["zoom", "width_shift", "height_shift", "shear", "a_long_operation_name", "vertical_flip"]
    ax.scatter(*zip(*points), s=90)
    ax.margins(x=0.35, y=0.15)
    figure.canvas.draw()
    _label_points(ax, points, names)

    renderer = figure.canvas.get_renderer()
    boxes = {text.get_text(): text.get_window_extent(renderer) for text in ax.texts}
    assert sorted(boxes) == sorted(names)
    markers = dict(zip(names, ax.transData.transform(points)))
    for name, box in boxes.items():
        assert ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1, name
        assert not any(box.overlaps(other) for other_name, other in boxes.items() if other_name != name), name
        assert not any(box.contains(*marker) for marker in markers.values()), name
        x, y = markers[name]
        assert abs(box.y0 - y) < 40 and min(abs(box.x0 - x), abs(box.x1 - x), abs(box.x0 + box.width / 2 - x)) < 20, (
            name
        )
    plt.close(figure)


def test_long_group_labels_leave_the_curves_room():
    """Groups named by their settings ("lesson, train.lr_schedule=constant") once squeezed the
    curve panels to slivers and pushed the forest plot's title off the figure."""
    import matplotlib.pyplot as plt

    from pipeline.study.figures import draw_comparison
    from pipeline.study.records import Difference, Group

    curves = {"val_accuracy": [0.3, 0.5, 0.6], "val_loss": [2.0, 1.5, 1.2]}
    groups, differences = [], []
    for schedule in ("constant", "warmup_cosine"):
        settings = {"train.lr_schedule": schedule}
        for preset in ("lesson", "none"):
            runs = [RunSummary(f"{preset}{s}", preset, str(s), {}, {}, curves) for s in (1, 2, 3)]
            groups.append(Group(preset, settings, runs))
        differences.append(
            Difference(
                groups[-2].label, groups[-1].label, "test_accuracy", 3, 3, "paired over 3 seeds", 0.02, -0.03, 0.07,
                verdict="inconclusive", per_seed={"1": 0.0, "2": 0.02, "3": 0.04},
            )
        )  # fmt: skip
    figure = draw_comparison(groups, differences)
    figure.tight_layout()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    curves_ax, loss_ax, forest = figure.axes
    assert curves_ax.get_position().width > 0.18 and loss_ax.get_position().width > 0.18
    assert forest.get_position().width > 0.12
    inside = figure.bbox
    title = forest.title.get_window_extent(renderer)
    assert inside.x0 <= title.x0 and title.x1 <= inside.x1
    ticks = [label.get_window_extent(renderer) for label in forest.get_yticklabels()]
    assert all(inside.x0 <= box.x0 for box in ticks)
    assert not ticks[0].overlaps(ticks[1])
    plt.close(figure)


def log_tiny_models(uri: str, preset: str, tmp_path) -> None:
    """A real (tiny) Keras model as the LoggedModel of each FINISHED run of `preset`."""
    import keras

    from pipeline.tracking import logged_model

    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")]
    )
    classes = tmp_path / "classes.json"
    classes.write_text('["cat", "dog", "fox"]')
    model.save(tmp_path / "tiny.keras")
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment("augmentation")
    client = MlflowClient(uri)
    for run in client.search_runs([experiment.experiment_id], f"tags.augmentation = '{preset}'"):
        if run.info.status == "FINISHED":
            with mlflow.start_run(run_id=run.info.run_id):
                logged_model.log_keras_model(
                    tmp_path / "tiny.keras", (8, 8), classes, 3, run.info.run_name, {"augmentation": preset}, {}
                )


@pytest.mark.slow  # end to end: logged models, the registry, predict from models:/...@champion in a process
def test_a_keep_verdict_registers_the_champion(tmp_path, capsys, store_uri):
    uri = store_uri
    log_known_runs(uri)
    log_tiny_models(uri, "lesson", tmp_path)
    args = [
        f"tracking.uri={uri}",
        f"paths.reports_dir={tmp_path}/reports",
        "compare.register=true",
        "compare.affinity=false",
    ]
    compare.run(compose(args))
    assert "is the champion: models:/augmentation@champion" in capsys.readouterr().out
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("augmentation", "champion")
    best_lesson = max(
        (
            r
            for r in client.search_runs(
                [client.get_experiment_by_name("augmentation").experiment_id],
                "tags.augmentation = 'lesson' and attributes.status = 'FINISHED'",
            )
        ),
        key=lambda r: r.data.metrics["test_accuracy"],
    )
    assert champion.run_id == best_lesson.info.run_id and champion.tags["group"] == "lesson"
    # the comparison run sits in its own experiment, not among the training runs
    (comparison,) = client.search_runs([client.get_experiment_by_name("augmentation-comparisons").experiment_id])
    assert comparison.data.tags["run_kind"] == "comparison"
    assert "augmentation-comparisons" not in {
        r.data.tags.get("compared_experiment")
        for r in client.search_runs([client.get_experiment_by_name("augmentation").experiment_id])
    }

    compare.run(compose(args))
    assert "is already the champion" in capsys.readouterr().out
    assert len(client.search_model_versions("name = 'augmentation'")) == 1  # a run is registered once

    # a better group takes the alias; a worse one is registered without it
    experiment_id = client.get_experiment_by_name("augmentation").experiment_id
    for seed, test in (("1", 0.90), ("2", 0.91), ("3", 0.92)):
        run = client.create_run(experiment_id, tags={"augmentation": "strong", "seed": seed})
        client.log_param(run.info.run_id, "seed", seed)
        client.log_param(run.info.run_id, "model.name", "residual_cnn")
        client.log_param(run.info.run_id, "augmentation.rotation_range", "30.0")
        client.log_metric(run.info.run_id, "test_accuracy", test)
        client.log_metric(run.info.run_id, "best_val_accuracy", test)
        client.set_terminated(run.info.run_id, "FINISHED")
    log_tiny_models(uri, "strong", tmp_path)
    for extra, expected in (
        (
            ["compare.filter=\"tags.seed != '4' and tags.seed != '5' and tags.seed != '6'\""],
            "(strong, test_accuracy 0.9100) is the champion",
        ),
        (["compare.filter=\"tags.augmentation != 'strong'\""], "the champion stays version 2"),
    ):
        compare.run(compose([*args, *extra]))
        assert expected in capsys.readouterr().out
    assert client.get_model_version_by_alias("augmentation", "champion").tags["group"] == "strong"

    photo = make_image(tmp_path / "photo.png", size=(8, 8), seed=3)
    predicted = run_in_process(
        "pipeline.predict", "models:/augmentation@champion", str(photo), "--json", env={"MLFLOW_TRACKING_URI": uri}
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert {name for name, _ in json.loads(predicted.stdout)[0]["top"]} <= {"cat", "dog", "fox"}


def test_a_failed_model_upload_leaves_the_logged_model_failed(tmp_path, store_uri):
    import keras

    from pipeline.tracking import logged_model

    mlflow.set_tracking_uri(store_uri)
    experiment = mlflow.set_experiment("augmentation")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.save(tmp_path / "tiny.keras")
    with mlflow.start_run():
        mlflow.log_metric("val_accuracy", 0.5, step=1)
        with pytest.raises(FileNotFoundError):
            logged_model.log_keras_model(
                tmp_path / "tiny.keras", (8, 8), tmp_path / "no-classes.json", 1, "tiny", {}, {}
            )
    (logged,) = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    assert str(logged.status).endswith("FAILED")


def _paired(differences: list[float], base: float = 0.80) -> tuple:
    """(lesson group, none group) whose per-seed test accuracy differences are `differences`."""
    runs = []
    for i, difference in enumerate(differences, start=1):
        runs += [summary("none", str(i)), summary("lesson", str(i))]
        runs[-2].metrics["test_accuracy"], runs[-1].metrics["test_accuracy"] = base, base + difference
    none, lesson = sorted(group_runs(runs), key=lambda g: g.preset != "none")
    return lesson, none


def test_a_verdict_needs_three_seeds_and_some_spread():
    one_image = 1 / 341  # one validation image: 0.29 points
    two_seeds = compare_with_baseline(*_paired([one_image, one_image]), "test_accuracy", 0.95)
    assert two_seeds.low == pytest.approx(one_image) == two_seeds.high  # a zero-width interval above 0 ...
    assert two_seeds.verdict == "inconclusive" and "too few seeds (2)" in two_seeds.reason  # ... is no evidence
    same_three = compare_with_baseline(*_paired([one_image] * 3), "test_accuracy", 0.95)
    assert (
        same_three.verdict == "inconclusive"
        and "zero spread" in same_three.reason
        and "+0.29 points" in same_three.reason
    )
    three = compare_with_baseline(*_paired([0.03, 0.04, 0.05]), "test_accuracy", 0.95)
    assert three.verdict == "keep" and three.low > 0  # three seeds that agree, with spread: a verdict
    worse = compare_with_baseline(*_paired([-0.03, -0.04, -0.05, -0.02, -0.06]), "test_accuracy", 0.95)
    assert worse.verdict == "drop" and worse.p_value == pytest.approx(2 / 32)  # drop although p > 0.05


def test_long_group_labels_make_short_unique_metric_names():
    source = "data.source=https://github.com/alexeygrigorev/clothing-dataset-small/archive/refs/heads/master.zip"
    labels = [f"lesson, data.image_size=[{size}, {size}], {source}" * 3 for size in (96, 128)]
    keys = [compare._metric_key(f"diff {label}") for label in labels]
    assert all(len(key) <= 200 for key in keys) and keys[0] != keys[1]  # MLflow refuses names over 250
    assert compare._metric_key("diff lesson") == "diff lesson"


def test_per_class_effects_diversity_and_cost_by_hand():
    from pipeline.study.verdicts import class_flags, cost, diversity

    # lesson gains 1 point on average over 5 seeds, but costs "shoes" 6 to 8 points on every seed
    shoes = [-0.06, -0.07, -0.08, -0.07, -0.06]
    shirts = [0.04, 0.05, 0.03, 0.06, 0.02]
    runs = []
    for i in range(5):
        seed = str(i + 1)
        plain = RunSummary(
            f"n{seed}",
            "none",
            seed,
            {"seed": seed},
            {"test_accuracy": 0.80, "test_recall.shoes": 0.9, "test_recall.shirts": 0.7},
            {"train_loss": [0.9, 0.5, 0.4], "epoch_seconds": [2.0, 1.0, 1.0]},
        )
        augmented = RunSummary(
            f"l{seed}",
            "lesson",
            seed,
            {"seed": seed},
            {"test_accuracy": 0.81, "test_recall.shoes": 0.9 + shoes[i], "test_recall.shirts": 0.7 + shirts[i]},
            {"train_loss": [1.2, 0.9, 0.6], "epoch_seconds": [6.0, 3.0, 4.0]},
        )
        runs += [plain, augmented]
    none, lesson = sorted(group_runs(runs), key=lambda g: g.preset != "none")
    d = compare_with_baseline(lesson, none, "test_accuracy", 0.95)
    c = d.per_class
    assert c["shoes"]["mean"] == pytest.approx(-0.068) and c["shirts"]["mean"] == pytest.approx(0.04)
    # Holm over the 2 classes: the smaller p is tested at 0.05/2, so its interval is a 97.5% t interval
    p_shoes, p_shirts = (stats.ttest_1samp(x, 0).pvalue for x in (shoes, shirts))
    assert c["shoes"]["p_adjusted"] == pytest.approx(2 * min(p_shoes, p_shirts), rel=1e-9)
    expected = stats.ttest_1samp(shoes, 0).confidence_interval(0.975)
    assert (c["shoes"]["low"], c["shoes"]["high"]) == pytest.approx((expected.low, expected.high), rel=1e-9)
    assert c["shoes"]["significant"] and c["shirts"]["significant"]
    (flag,) = class_flags(d)  # the loss against the average gain is flagged; shirts gain with the average
    assert "costs shoes -6.80 points" in flag
    from pipeline.study.report import class_table

    shoes_row = next(row for row in class_table([vars(d)]) if row.startswith("| shoes |"))
    assert shoes_row == f"| shoes | **-6.80** [{expected.low * 100:+.2f}, {expected.high * 100:+.2f}] |"
    # diversity: final losses 0.6 / 0.4; cost: training time 13 s a run (6+3+4) over 4 s (2+1+1)
    assert diversity(lesson, none) == pytest.approx(1.5) and cost(lesson, none) == pytest.approx(13 / 4)


def test_convergence_is_judged_against_the_cap_and_patience():
    def run(best, trained, epochs, patience):
        return RunSummary(
            "r",
            "lesson",
            "1",
            {"train.epochs": str(epochs), "train.patience": str(patience)},
            {"best_epoch": best},
            {"val_accuracy": [0.5] * trained},
        )

    assert run(best=11, trained=21, epochs=30, patience=10).converged  # early stopping saw it out
    assert run(best=20, trained=30, epochs=30, patience=10).converged  # the cap came exactly after patience
    assert run(best=21, trained=30, epochs=30, patience=10).converged is False  # within the last 10 of the cap
    assert run(best=30, trained=30, epochs=30, patience=10).converged is False
    assert run(best=35, trained=50, epochs=30, patience=10).converged  # a resume raised the cap to 50
    assert RunSummary("r", "none", "1", {}, {}).converged is None


def test_runs_on_two_data_versions_are_never_one_verdict(tmp_path, store_uri):
    """none and light on one version of the data, light again after an image changed: the
    second light group has no baseline of its own data, and is not paired with the first's."""
    uri = store_uri
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("augmentation")
    old, new = "a" * 64, "b" * 64
    for preset, version, accuracies in (
        ("none", old, (0.80, 0.81, 0.79)),
        ("light", old, (0.82, 0.83, 0.81)),
        ("light", new, (0.90, 0.91, 0.92)),
    ):
        for seed, accuracy in zip(("1", "2", "3"), accuracies):
            tags = {"augmentation": preset, "seed": seed, "data_manifest_sha256": version}
            run = client.create_run(experiment_id, tags=tags)
            client.log_param(run.info.run_id, "seed", seed)
            client.log_metric(run.info.run_id, "test_accuracy", accuracy)
            client.set_terminated(run.info.run_id, "FINISHED")
    result = run_in_process(
        "pipeline.compare", f"tracking.uri={uri}", f"paths.reports_dir={tmp_path}/r", "compare.affinity=false"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "r" / "comparison.json").read_text())
    by_group = {d["group"]: d for d in report["differences"]}
    assert set(by_group) == {"light, data.version=aaaaaaaaaaaa", "light, data.version=bbbbbbbbbbbb"}
    same_data = by_group["light, data.version=aaaaaaaaaaaa"]
    assert same_data["mean"] == pytest.approx(0.02) and same_data["method"] == "paired over 3 seeds"
    other_data = by_group["light, data.version=bbbbbbbbbbbb"]
    assert other_data["mean"] is None and other_data["baseline"] == "none (missing)"
    assert "trained on 2 versions of the data (aaaaaaaaaaaa, bbbbbbbbbbbb" in result.stdout
    rows = [line.split("  ")[0] for line in result.stdout.splitlines() if line.startswith("light") and "  " in line]
    assert len(rows) == 2 and rows[0].endswith("a") and rows[1].endswith("b")  # told apart, at any terminal width

    plain_old = [summary("none", s, **{"data.version": "v1"}) for s in ("1", "2")]
    augmented_new = [summary("lesson", s, **{"data.version": "v2"}) for s in ("1", "2")]
    assert varied_settings(plain_old + augmented_new) == ["data.version"]  # though constant within each preset


def test_a_baseline_no_run_used_is_an_error_naming_the_presets(tmp_path, store_uri):
    uri = store_uri
    log_known_runs(uri)
    result = run_in_process(
        "pipeline.compare", f"tracking.uri={uri}", f"paths.reports_dir={tmp_path}/r", "compare.baseline=nosuch"
    )
    assert result.returncode == 1
    assert "error: compare.baseline=nosuch: none of these" in result.stderr
    assert "their presets are " in result.stderr and "Set compare.baseline to one of them" in result.stderr
    assert not (tmp_path / "r").exists()  # no report full of "missing"


def test_no_interval_leaves_what_a_difference_of_fractions_can_take():
    """3 seeds of a shirt recall that swings from 0 to 1: the t interval alone would run past
    +-100 points; the reported one stops at the bounds and still holds the mean."""
    recalls = {"none": (0.0, 1.0, 0.0), "lesson": (1.0, 0.0, 1.0)}

    def run(preset, seed):
        recall = recalls[preset][int(seed) - 1]
        metrics = {"test_accuracy": 0.8 + 0.01 * int(seed) * (preset == "lesson"), "test_recall.shirt": recall}
        return RunSummary(f"{preset}{seed}", preset, seed, {"seed": seed}, metrics)

    groups = {g.preset: g for g in group_runs([run(p, s) for p in recalls for s in ("1", "2", "3")])}
    difference = compare_with_baseline(groups["lesson"], groups["none"], "test_accuracy", 0.95)
    shirt = difference.per_class["shirt"]
    unbounded = stats.ttest_1samp([1.0, -1.0, 1.0], 0).confidence_interval(0.95)
    assert unbounded.low < -1 and unbounded.high > 1  # a report once said -141.99 to +108.65 points
    assert (shirt["low"], shirt["high"]) == (-1.0, 1.0) and shirt["low"] <= shirt["mean"] <= shirt["high"]
    assert -1 <= difference.low <= difference.high <= 1


def test_an_interval_inside_the_margin_is_equivalent_and_one_past_it_is_not():
    from pipeline.study.decisions import correct_for_many

    tiny = [0.001, -0.002, 0.0, 0.001, -0.001, 0.002, -0.001, 0.0]  # 8 seeds within +-0.2 points
    equivalent = compare_with_baseline(*_paired(tiny), "test_accuracy", 0.95, margin=0.01)
    assert equivalent.verdict == "equivalent" and -0.01 < equivalent.low < equivalent.high < 0.01
    assert "within +-1 points (compare.margin)" in equivalent.reason
    without = compare_with_baseline(*_paired(tiny), "test_accuracy", 0.95)
    assert without.verdict == "inconclusive"  # no margin: "no difference" is never claimed
    wide = compare_with_baseline(*_paired([0.02, -0.02, 0.01, -0.01, 0.0]), "test_accuracy", 0.95, margin=0.01)
    assert wide.verdict == "inconclusive" and wide.low < -0.01  # it may still be a 1-point effect
    drop = compare_with_baseline(*_paired([-0.03, -0.04, -0.05, -0.02, -0.06]), "test_accuracy", 0.95, margin=0.1)
    assert drop.verdict == "drop"  # a clear effect smaller than the margin stays what it is
    family = [equivalent, wide]
    correct_for_many(family, 0.95, 0.8, margin=0.01)  # Holm widens the intervals; the verdict is decided again
    assert equivalent.verdict_confidence > 0.95 and equivalent.family_size == 2
    assert equivalent.verdict == "equivalent" and "(Holm over 2 comparisons)" in equivalent.reason


def test_an_ablation_figure_pairs_a_preset_with_its_ablations_and_sets_the_baseline_apart():
    from pipeline.study.figures import group_styles

    def run(preset, seed, ablate=None):
        params = {"seed": seed, **({"augmentation.ablate": ablate} if ablate else {})}
        return RunSummary(f"{preset}{seed}", preset, seed, params, {"test_accuracy": 0.8})

    runs = [run("none", "1"), run("lesson", "1"), run("light", "1")]
    runs += [run(f"lesson-no-{op}", "1", op) for op in ("rotation", "zoom")]
    groups = group_runs(runs)
    baseline = next(g for g in groups if g.preset == "none")
    differences = [compare_with_baseline(g, baseline, "test_accuracy", 0.95) for g in groups if g is not baseline]
    styles = dict(zip((g.preset for g in groups), group_styles(groups, differences)))
    assert styles["none"] == ("black", "-", "o")
    assert styles["lesson"][1:] == ("-", "o") and styles["light"][1:] == ("-", "o")
    assert styles["lesson-no-rotation"][1:] == ("--", "x") and styles["lesson-no-zoom"][1:] == ("--", "x")
    colours = [style[0] for preset, style in styles.items() if preset != "none"]
    assert len(set(colours)) == len(colours)  # every other group a colour of its own


def test_per_class_effects_pair_every_image_of_every_seed_when_predictions_are_logged():
    """3 seeds; class `shirt` has 4 test images, `shoe` 2. lesson gets shirt images 1 and 3 right
    where none gets them wrong on seeds 1-2, and loses image 4 on seed 3: the table of
    `test_crossed_t_by_hand`. Without predictions in one run, each seed's recall is used instead."""
    shirt_none = [["wrong", "right", "wrong", "right"]] * 3
    shirt_lesson = [["right", "right", "right", "right"], ["wrong", "right", "right", "right"]]
    shirt_lesson.append(["wrong", "right", "wrong", "wrong"])

    def predictions(rows, seed):
        found = {f"shirt{i}": ("shirt", "shirt" if rows[seed][i] == "right" else "shoe") for i in range(4)}
        return found | {"shoe0": ("shoe", "shoe"), "shoe1": ("shoe", "shirt")}

    runs = []
    for seed in range(3):
        for preset, rows in (("none", shirt_none), ("lesson", shirt_lesson)):
            recall = sum(r == "right" for r in rows[seed]) / 4
            metrics = {"test_accuracy": 0.8, "test_recall.shirt": recall, "test_recall.shoe": 0.5}
            run = RunSummary(f"{preset}{seed}", preset, str(seed + 1), {"seed": str(seed + 1)}, metrics)
            run.test_predictions = predictions(rows, seed)
            runs.append(run)
    groups = {g.preset: g for g in group_runs(runs)}
    d = compare_with_baseline(groups["lesson"], groups["none"], "test_accuracy", 0.95)
    shirt = d.per_class["shirt"]
    table = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, -1]], dtype=float)
    mean, error, freedom = crossed_t(table)
    assert shirt["method"] == "per image" and shirt["images"] == 4 and shirt["seeds"] == 3
    assert shirt["mean"] == pytest.approx(1 / 6)  # the mean recall difference over the seeds, as per seed
    half = stats.t.ppf(1 - 0.05 / 2, freedom) * error  # Holm: shoe has no spread, so shirt is tested alone
    assert (shirt["low"], shirt["high"]) == pytest.approx((mean - half, mean + half))
    assert d.per_class["shoe"]["p_adjusted"] is None and d.per_class["shoe"]["mean"] == 0

    runs[0].test_predictions = {}  # one run evaluated before predictions were logged
    groups = {g.preset: g for g in group_runs(runs)}
    d = compare_with_baseline(groups["lesson"], groups["none"], "test_accuracy", 0.95)
    assert d.per_class["shirt"]["method"] == "per seed" and "images" not in d.per_class["shirt"]
    per_seed = stats.ttest_1samp([0.5, 0.25, -0.25], 0).confidence_interval(0.95)
    assert (d.per_class["shirt"]["low"], d.per_class["shirt"]["high"]) == pytest.approx((per_seed.low, 1.0))  # cut


def _difference(group: str, baseline: str, mean: float, **fields):
    from pipeline.study.records import Difference

    return Difference(group, baseline, "test_accuracy", 5, 5, "paired over 5 seeds", mean, **fields)


def test_the_class_effects_figure_frames_exactly_the_significant_cells():
    from pipeline.study.figures import draw_class_effects

    cell = {"low": -0.1, "high": 0.1, "p_adjusted": 0.5, "seeds": 5}
    lesson = _difference(
        "lesson",
        "none",
        -0.05,
        per_class={
            "shirt": {**cell, "mean": -0.14, "significant": True},
            "shoes": {**cell, "mean": 0.01, "significant": False},
        },
    )
    light = _difference("light", "none", -0.02, per_class={"shirt": {**cell, "mean": -0.02, "significant": False}})
    figure = draw_class_effects([lesson, light, _difference("mixup", "none", 0.0)])  # mixup: no classes, left out
    (ax, _colorbar) = figure.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["shirt", "shoes"]
    assert [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()] == ["lesson vs none", "light vs none"]
    frames = [patch for patch in ax.patches if not patch.get_fill()]
    assert [(frame.get_x(), frame.get_y()) for frame in frames] == [(-0.5, -0.5)]  # lesson x shirt only
    assert "the 1 cell(s) whose Holm-corrected interval excludes 0" in ax.get_title()
    assert {t.get_text() for t in ax.texts} == {"-14.0", "+1.0", "-2.0"}  # light has no shoes cell
    coloured = ax.images[1].get_array()  # colour only where significant: the rest is grey beneath
    assert coloured[0, 0] == pytest.approx(-14.0) and coloured.mask.tolist() == [[False, True], [True, True]]
    plt.close(figure)


def test_the_affinity_figure_places_each_preset_and_operation_at_its_two_numbers():
    from pipeline.study.figures import draw_affinity_diversity

    presets = [
        _difference("lesson", "none", -0.057, affinity=0.76, diversity=4.4),
        _difference("light", "none", -0.024, affinity=0.97, diversity=1.9),
        _difference("strong", "none", -0.036),  # no affinity measured: not drawn
    ]
    operations = [_difference("vertical_flip", "lesson-no-vertical_flip", -0.044, affinity=0.85, diversity=1.7)]
    figure = draw_affinity_diversity(presets, operations)
    left, right, _colorbar = figure.axes
    assert (left.get_title(), right.get_title()) == ("presets, against the baseline", "operations, in their preset")
    points = [ax.collections[0].get_offsets().tolist() for ax in (left, right)]
    assert points == [[[0.76, 4.4], [0.97, 1.9]], [[0.85, 1.7]]]
    assert [ax.collections[1].get_offsets().tolist() for ax in (left, right)] == [[[1.0, 1.0]]] * 2  # the baseline
    assert {t.get_text() for t in left.texts} == {"lesson", "light", "baseline (1, 1)"}
    assert {t.get_text() for t in right.texts} == {"vertical_flip", "baseline (1, 1)"}
    assert left.collections[0].get_array().tolist() == pytest.approx([-5.7, -2.4])  # coloured by the difference
    plt.close(figure)


def test_the_printed_comparison_fits_100_columns_and_ends_with_one_line_per_verdict():
    """What a terminal shows: a table no wider than the terminal (COLUMNS=100), the links, and last the
    verdicts, one line each, in points."""
    import shutil as files
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="c-", dir="/tmp"))  # a short store path: its command fits the width
    try:
        uri = f"sqlite:///{folder}/mlflow.db"
        log_known_runs(uri)
        result = run_in_process(
            "pipeline.compare", f"tracking.uri={uri}", f"paths.reports_dir={folder}/reports", env={"COLUMNS": "100"}
        )
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads((folder / "reports" / "comparison.json").read_text())
    finally:
        files.rmtree(folder, ignore_errors=True)
    lines = result.stdout.rstrip().splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    verdicts = [line for line in lines if " vs none: " in line]
    assert verdicts and lines[-len(verdicts) :] == verdicts  # the output ends with them
    (lesson_d,) = [d for d in report["differences"] if d["group"] == "lesson"]
    interval = f"[{lesson_d['low'] * 100:+.2f}, {lesson_d['high'] * 100:+.2f}]"
    lesson = next(line for line in verdicts if line.startswith("lesson vs none: "))
    assert lesson == f"lesson vs none: {lesson_d['verdict'].upper()} +4.00 points {interval}, 3 seeds"
    assert "points: percentage points of test_accuracy" in result.stdout and "±" in result.stdout
    assert "mlflow ui --app-name model-training --backend-store-uri" in result.stdout


def test_test_time_augmentation_gets_its_own_paired_verdict_corrected_with_the_others(tmp_path, store_uri):
    """Runs evaluated with evaluate.tta: each group's TTA result minus its plain one, paired by seed within
    the same runs, in the report, the terminal, the figures' family and the comparison run; Holm over
    every comparison. A group evaluated with two kinds of TTA gets no TTA verdict."""
    uri = store_uri
    gains = {"none": {"1": 0.02, "2": 0.03, "3": 0.01}, "lesson": {"1": 0.0, "2": -0.01, "3": 0.01}}
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("augmentation")
    for preset, seeds in KNOWN.items():
        if preset not in ("none", "lesson", "mixup"):
            continue
        for seed, (val, test) in seeds.items():
            rid = client.create_run(experiment_id, tags={"augmentation": preset, "seed": seed}).info.run_id
            client.log_param(rid, "seed", seed)
            client.log_param(rid, "train.epochs", "4")
            for name, value in (("best_val_accuracy", val), ("test_accuracy", test), ("best_epoch", 2)):
                client.log_metric(rid, name, value)
            if preset in gains:
                client.log_metric(rid, "tta_test_accuracy", test + gains[preset][seed])
                client.set_tag(rid, "evaluate.tta", "flip")
            elif seed != "3":  # mixup: two runs with one TTA, one with none
                client.log_metric(rid, "tta_test_accuracy", test)
                client.set_tag(rid, "evaluate.tta", "lesson x4 seed 0")
            client.set_terminated(rid, "FINISHED")

    printed = run_in_process("pipeline.compare", f"tracking.uri={uri}", f"paths.reports_dir={tmp_path}/reports")
    assert printed.returncode == 0, printed.stderr[-3000:]
    report = json.loads((tmp_path / "reports" / "comparison.json").read_text())
    arms = {d["group"]: d for d in report["tta"]}
    assert set(arms) == {"none+tta(flip)", "lesson+tta(flip)"}  # not mixup: its runs differ in TTA
    none = arms["none+tta(flip)"]
    assert none["baseline"] == "none" and none["method"] == "paired over 3 seeds"
    assert none["per_seed"] == pytest.approx(gains["none"]) and none["mean"] == pytest.approx(0.02)
    expected = stats.ttest_1samp(list(gains["none"].values()), 0).confidence_interval(0.95)
    assert (none["t_low"], none["t_high"]) == pytest.approx((expected.low, expected.high))
    assert {d["family_size"] for d in report["differences"] + report["tta"]} == {4}  # lesson, mixup and the 2 arms
    markdown = (tmp_path / "reports" / "comparison.md").read_text()
    assert "## Test-time augmentation" in markdown and "| none+tta(flip) |" in markdown
    assert f"none+tta(flip) vs none: {none['verdict'].upper()} +2.00 points" in printed.stdout
    (comparison,) = client.search_runs([client.get_experiment_by_name("augmentation-comparisons").experiment_id])
    assert comparison.data.tags["verdict.none_tta_flip_"] == none["verdict"]
    assert comparison.data.metrics["difference/none_tta_flip_"] == pytest.approx(2.0)


def test_runs_on_splits_drawn_per_seed_are_grouped_apart_and_paired_only_within_one_split():
    per_seed = "data.split.train_val_per_seed"
    fixed = [
        summary(p, s, **{per_seed: "False", "data.train_val": "fixed"}) for p in ("none",) for s in ("1", "2", "3")
    ]
    drawn = [summary("lesson", s, **{per_seed: "True", "data.train_val": f"drawn{s}"}) for s in ("1", "2", "3")]
    assert varied_settings(fixed + drawn) == [per_seed]  # though constant within each preset
    lesson, none = sorted(group_runs(fixed + drawn), key=lambda g: g.preset)
    assert lesson.settings == {per_seed: "True"} and none.settings == {per_seed: "False"}

    # records at odds (one seed's two runs on different train/val sets) are never a pair
    none_drawn = [summary("none", s, **{per_seed: "True", "data.train_val": f"drawn{s}"}) for s in ("1", "2", "3")]
    none_drawn[2].params["data.train_val"] = "other"
    for r, accuracy in zip(drawn + none_drawn, (0.82, 0.84, 0.90, 0.80, 0.81, 0.70)):
        r.metrics["test_accuracy"] = accuracy
    lesson, none = sorted(group_runs(drawn + none_drawn), key=lambda g: g.preset)
    result = compare_with_baseline(lesson, none, "test_accuracy", 0.95)
    assert result.other_splits == ["3"] and result.per_seed == pytest.approx({"1": 0.02, "2": 0.03})
    assert result.method == "paired over 2 seeds"
