"""Where an augmented run's time goes, per part, and its ratio to the plain run of the same seed.

    python bench/augmented_run.py --data ../shared/datasets/clothing-small
    python bench/augmented_run.py --data ../shared/datasets/clothing-small --rounds 3 train.augment_views=8

`experiment=cpu` (frozen ImageNet EfficientNet-Lite0, 150x150, batch 32), the lesson's augmentation.

1. **Parts**, timed in this process through the stages' own functions on the real training split,
   each `--repeats` times (median): decoding the split, converting the frozen base for OpenVINO and
   reading that conversion back, the warp of one view alone, the base pass of one view alone, one
   fresh view as training computes it (warp and base pipelined), one epoch that reuses a view, the
   head's steps of one epoch, and the validation pass of one epoch.
2. **Whole runs**: `python -m pipeline.train` with `augmentation=none` and with `augmentation=lesson`
   for the same seed, back to back, `--rounds` times, in a fresh MLflow store with the frozen base
   converted and the split decoded beforehand (as for every run of a sweep after its first); each
   run's duration is MLflow's (start to end of the run), its epochs from its history.

The table puts each part beside how often an augmented run pays it (the epochs are those of the
measured `lesson` runs). Trailing arguments are Hydra overrides for both. Last lines:
seconds_per_augmented_epoch=<fresh view, reused view> and augmented_run_ratio=<lesson / none run
duration, median over the rounds>.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from frozen_runtime import cpu_model

import pipeline  # noqa: F401 - first, so that TensorFlow starts quietly
from pipeline.backend import keras, tf
from pipeline.config.compose import compose
from pipeline.data.cache import DiskCache
from pipeline.data.manifests import Split
from pipeline.model.classifier import build_model, compile_model
from pipeline.model.frozen_runtime import _compiled, frozen_network
from pipeline.split import run as run_split
from pipeline.training.frozen_features import AugmentedViews, epoch_order, plain_features
from pipeline.training.pipelines import build_feature_eval_dataset, build_feature_train_dataset

ROOT = Path(__file__).resolve().parent.parent


def timed(work, repeats: int) -> float:
    """The median seconds of `work()` over `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def parts(config, repeats: int, scratch: Path) -> dict[str, float]:
    split_dir, size, batch = config.paths.split_dir, tuple(config.data.image_size), config.train.batch_size
    train, val = Split.read(split_dir).train, Split.read(split_dir).val
    cache = DiskCache(scratch / "parts-cache")
    model = build_model(config.model, len(train.classes), size)
    features = model.get_layer("features")
    seconds = {"decode the training split (once per sweep)": timed(lambda: train.decoded(size, None), repeats)}
    pixels = train.decoded(size, cache)
    seconds["read the decoded split back (every later run)"] = timed(lambda: train.decoded(size, cache), repeats)

    def convert():
        _compiled.clear()
        for entry in (scratch / "convert").glob("*"):
            __import__("shutil").rmtree(entry, ignore_errors=True)
        frozen_network(features, config.model.frozen_runtime, config.model.frozen_precision, scratch / "convert")

    seconds["convert the frozen base (once per machine)"] = timed(convert, 1)

    def read_conversion():
        _compiled.clear()
        frozen_network(features, config.model.frozen_runtime, config.model.frozen_precision, scratch / "convert")

    seconds["read the conversion back (every later process)"] = timed(read_conversion, repeats)
    network = frozen_network(features, config.model.frozen_runtime, config.model.frozen_precision, scratch / "convert")

    def new_views() -> AugmentedViews:
        return AugmentedViews(
            network, train, pixels, config.augmentation, batch, config.seed, config.train.augment_views
        )

    views = new_views()
    order = epoch_order(config.seed, 0, len(train))
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]

    def warp_only():
        return [
            views._augment(pixels[b], views.labels[b], tf.constant(i, tf.int64))[0].numpy()
            for i, b in enumerate(batches)
        ]

    warped = warp_only()  # traces and compiles the warp first
    seconds["warp of one view alone"] = timed(warp_only, repeats)
    seconds["base pass of one view alone"] = timed(lambda: [0 for _ in network.map((w, None) for w in warped)], repeats)

    def fresh_view():
        fresh = new_views()
        for _ in fresh.dataset(0).take(fresh.steps):
            pass

    fresh_view()  # traces the new stream's functions
    seconds["a fresh view: warp + base pass, in the training stream"] = timed(fresh_view, repeats)
    later = max(1, config.train.augment_views)
    for epoch in range(later):  # the views, computed
        for _ in views.epoch(epoch):
            pass
    seconds["an epoch that reuses a view"] = timed(lambda: [0 for _ in views.epoch(later)], repeats)

    head = model.get_layer("head")
    compile_model(head, config.model, config.train, views.steps, False)
    train_features = plain_features(network, train, size, lambda: pixels, batch, cache)
    train_ds = build_feature_train_dataset(train_features, train, batch, config.seed)
    val_pixels = val.decoded(size, cache)
    val_ds = build_feature_eval_dataset(
        plain_features(network, val, size, lambda: val_pixels, batch, cache), val, batch
    )
    head.fit(train_ds, epochs=1, steps_per_epoch=views.steps, verbose=0)  # traces the step
    seconds["the head's steps of one epoch"] = timed(
        lambda: head.fit(train_ds, epochs=1, steps_per_epoch=views.steps, verbose=0), repeats
    )
    head.evaluate(val_ds, verbose=0)
    seconds["validation of one epoch (cached val features)"] = timed(lambda: head.evaluate(val_ds, verbose=0), repeats)
    return seconds


def whole_runs(overrides: list[str], scratch: Path, rounds: int) -> tuple[list[float], list[dict]]:
    """(lesson/none duration ratios, each run's record) from `pipeline.train` runs back to back."""
    import mlflow

    uri = f"sqlite:///{scratch}/runs.db"
    common = [
        *overrides,
        f"tracking.uri={uri}",
        f"paths.models_dir={scratch}/models",
        f"paths.reports_dir={scratch}/reports",
        f"hydra.run.dir={scratch}/hydra",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def train(preset: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.train", *common, f"augmentation={preset}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise SystemExit(f"pipeline.train augmentation={preset} failed:\n{done.stderr[-3000:]}")
        mlflow.set_tracking_uri(uri)
        run = mlflow.search_runs(experiment_names=["augmentation"], output_format="list", order_by=["start_time DESC"])[
            0
        ]
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "epoch_seconds")
        return {
            "preset": preset,
            "seconds": (run.info.end_time - run.info.start_time) / 1000,
            "epochs": len(history),
            "epoch_seconds": [m.value for m in sorted(history, key=lambda m: m.step)],
        }

    train("none")  # converts the base and decodes the split into the cache, as a sweep's first run does
    ratios, records = [], []
    for _ in range(rounds):
        plain, augmented = train("none"), train("lesson")
        ratios.append(augmented["seconds"] / plain["seconds"])
        records += [plain, augmented]
    return ratios, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of whole runs (none, lesson)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each part (median)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. train.augment_views=8")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        overrides = [
            "experiment=cpu",
            f"seed={args.seed}",
            f"paths.split_dir={scratch}/split",
            f"paths.cache_dir={scratch}/cache",
            *args.overrides,
        ]
        run_split(compose([*overrides, f"data.source={args.data.resolve()}"]))
        config = compose([*overrides, "augmentation=lesson"])
        keras.utils.set_random_seed(config.seed)
        seconds = parts(config, args.repeats, scratch)
        ratios, records = whole_runs(overrides, scratch, args.rounds)

    lesson = [r for r in records if r["preset"] == "lesson"]
    plain = [r for r in records if r["preset"] == "none"]
    epochs = statistics.median(r["epochs"] for r in lesson)
    views = config.train.augment_views or epochs
    fresh = min(views, epochs)
    per_run = {
        "decode the training split (once per sweep)": 0,
        "read the decoded split back (every later run)": 1,
        "convert the frozen base (once per machine)": 0,
        "read the conversion back (every later process)": 0,
        "warp of one view alone": 0,  # inside the fresh views
        "base pass of one view alone": 0,
        "a fresh view: warp + base pass, in the training stream": fresh,
        "an epoch that reuses a view": epochs - fresh,
        "the head's steps of one epoch": epochs - fresh,  # the fresh views' steps run inside them
        "validation of one epoch (cached val features)": epochs,
    }
    run_seconds = statistics.median(r["seconds"] for r in lesson)
    print(
        f"machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores; train.augment_views={config.train.augment_views}"
    )
    print(f"| part of a `lesson` run ({epochs:g} epochs) | seconds | times a run | of the run ({run_seconds:.0f} s) |")
    print("|---|---|---|---|")
    for name, value in seconds.items():
        times = per_run[name]
        share = f"{value * times / run_seconds:.0%}" if times else "-"
        print(f"| {name} | {value:.2f} | {times:g} | {share} |")
    print("| whole runs (MLflow durations) | none | lesson | ratio |")
    print("|---|---|---|---|")
    for a, b in zip(plain, lesson):
        print(
            f"| {a['epochs']} / {b['epochs']} epochs | {a['seconds']:.1f} s | {b['seconds']:.1f} s | {b['seconds'] / a['seconds']:.2f} |"
        )
    fresh_epochs = [s for r in lesson for s in r["epoch_seconds"][:fresh]]
    reused_epochs = [s for r in lesson for s in r["epoch_seconds"][fresh:]]
    print(
        f"seconds_per_augmented_epoch={statistics.median(fresh_epochs):.2f} (a fresh view), "
        f"{statistics.median(reused_epochs) if reused_epochs else float('nan'):.2f} (a reused view); "
        f"plain {statistics.median(s for r in plain for s in r['epoch_seconds']):.2f}"
    )
    print(f"augmented_run_ratio={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
