"""The evaluate stage on a saved model: what it reads, what it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import evaluate
from pipeline.config.compose import compose
from pipeline.data.manifests import read_classes
from pipeline.model.classifier import build_model


def test_evaluate_uses_the_size_the_model_was_trained_at(split_done, capsys):
    tmp_path = split_done
    overrides = [
        f"paths.split_dir={tmp_path}/split",
        f"paths.reports_dir={tmp_path}/reports",
        f"paths.models_dir={tmp_path}/models",
    ]
    trained_at = compose(["model=residual_cnn", "data.image_size=[32,32]", *overrides])
    model = build_model(trained_at.model, len(read_classes(tmp_path / "split")), (32, 32))
    (tmp_path / "models").mkdir()
    model.save(tmp_path / "models" / "model.keras")

    metrics = evaluate.run(compose(overrides))  # data.image_size left at its default, 150x150
    assert "the model takes 32x32 images (data.image_size is 150x150)" in capsys.readouterr().out
    assert metrics["test_images"] == 3 and 0 <= metrics["test_accuracy"] <= 1
    headline = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert headline["test_images"] == 3 and "per_class" not in headline  # DVC's metrics: the headline only
    assert list(headline) == ["test_accuracy", "test_balanced_accuracy", "test_macro_f1", "test_loss", "test_images"]
    per_class = json.loads((tmp_path / "reports" / "per_class.json").read_text())
    classes = read_classes(tmp_path / "split")
    assert set(per_class["test"]) == set(classes) and per_class["test"] == metrics["per_class"]["test"]
    assert set(per_class["val_recall"]) <= set(classes) and all(0 <= r <= 1 for r in per_class["val_recall"].values())


def test_balanced_accuracy_sees_a_class_that_is_never_predicted():
    actual = np.array([0] * 98 + [1] * 2)
    predicted = np.zeros(100, dtype=int)  # the majority class, always
    metrics = evaluate.classification_metrics(actual, predicted, ["common", "rare"])
    assert metrics["accuracy"] == 0.98
    assert metrics["balanced_accuracy"] == 0.5  # recalls 1.0 and 0.0
    assert metrics["macro_f1"] == pytest.approx((2 * 0.98 / 1.98 + 0) / 2, abs=1e-6)
    assert metrics["per_class"]["rare"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_predict_takes_a_folder_in_batches_and_notes_what_is_not_an_image(tmp_path, capsys, monkeypatch):
    from pipeline import predict
    from tests.conftest import make_image

    model = build_model(compose(["model=residual_cnn"]).model, 3, (32, 32))
    model.save(tmp_path / "model.keras")
    (tmp_path / "classes.json").write_text(json.dumps(["cat", "dog", "fox"]))
    photos = tmp_path / "photos"
    for i in range(7):
        make_image(photos / ("sub" if i % 2 else "") / f"p{i}.png", seed=i, pattern=i % 3)
    (photos / "notes.txt").write_text("not an image")
    (photos / ".DS_Store").write_text("hidden")
    code = predict.main([str(tmp_path / "model.keras"), str(photos), "--json"])  # one batch
    unbatched = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(predict, "PREDICT_BATCH", 3)  # 7 images: three batches
    code = predict.main([str(tmp_path / "model.keras"), str(photos), "--json"])
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert results == unbatched  # the same files, classes and probabilities, batch by batch
    assert code == 0 and len(results) == 7 and all(len(r["top"]) == 3 for r in results)
    assert sorted(r["file"].rsplit("/", 1)[-1] for r in results) == [f"p{i}.png" for i in range(7)]
    assert "1 file(s) in the folder(s) are not usable images" in captured.err and "notes.txt" in captured.err
    assert (
        "predict: 8 files in" in captured.err
    )  # the files looked at (7 images and a note), on stderr (a whole line: not a terminal)


def test_test_time_augmentation_averages_each_image_with_its_views(split_done, capsys):
    """evaluate.tta=flip: the metrics of the mean of the model's probabilities on each test image and its
    mirror, computed here from the model itself; evaluate.tta=<preset>: views drawn alike in any run
    (a fixed seed), unlike the plain image, and a mean over tta_views + 1 outputs."""
    from pipeline.model.frozen_runtime import SplitClassifier
    from pipeline.tta import averaged_probabilities

    tmp_path = split_done
    overrides = [f"paths.{d}_dir={tmp_path}/{d}" for d in ("split", "reports", "models")] + ["data.image_size=[32,32]"]
    config = compose(["model=residual_cnn", *overrides, "evaluate.tta=flip"])
    classes = read_classes(tmp_path / "split")
    model = build_model(config.model, len(classes), (32, 32))
    (tmp_path / "models").mkdir()
    model.save(tmp_path / "models" / "model.keras")

    metrics = evaluate.run(config)
    assert "with test-time augmentation (flip): accuracy" in capsys.readouterr().out
    tested = images_tested(tmp_path)
    pixels = tested.decoded((32, 32))
    plain, mirrored = (model.predict(x.astype(np.float32), verbose=0) for x in (pixels, pixels[:, :, ::-1]))
    averaged = (plain + mirrored) / 2
    expected = evaluate.headline_metrics(np.asarray(tested.labels), averaged, classes, "tta_test_")
    assert metrics["tta_test_accuracy"] == expected["tta_test_accuracy"]
    assert metrics["tta_test_loss"] == pytest.approx(expected["tta_test_loss"], abs=1e-5)
    headline = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert {"tta_test_accuracy", "tta_test_macro_f1"} <= set(headline) and not any("recall." in k for k in headline)

    lesson = compose([*overrides, "evaluate.tta=lesson", "evaluate.tta_views=3"]).evaluate
    classifier = SplitClassifier(model, "tensorflow", "f32", tmp_path / "cache", convert=False)
    first, again = (averaged_probabilities(classifier, pixels, lesson, 2) for _ in range(2))
    np.testing.assert_allclose(first, again, atol=1e-6)  # the same views: a fixed seed
    assert not np.allclose(first, plain, atol=1e-4)  # the views are not the image
    np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=1e-5)  # still probabilities


def images_tested(tmp_path):
    from pipeline.data.manifests import Split

    return Split.read(tmp_path / "split").test
