"""What proving the cache costs: the checks a plain run makes before it uses what the cache holds,
against the plain run itself.

    python bench/cache_verification.py --data ../shared/datasets/clothing-small
    python bench/cache_verification.py --data ../shared/datasets/clothing-small --rounds 5

`experiment=cpu` (frozen EfficientNet-Lite0, 150 px), plain: after one run has filled a fresh cache,
each round times, in one process, a plain run (`pipeline.train`, the whole stage: MLflow record
included) and then, as a new process would make them, the checks that run made: every train and val
image against the manifest (`Split.require_unchanged`: a stat per file, the record of the last check),
the exported and the compiled network against their cards, and the train and val features' sha256
(`DiskCache.get`). An augmented run proves the decoded images too (`decoded` below, 207 MB here).
Last line: verification_share=<checks / plain run, median over the rounds, in percent> (goal < 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from frozen_runtime import cpu_model

from pipeline.config.compose import compose
from pipeline.data import cache as disk
from pipeline.data.manifests import Split
from pipeline.split import run as run_split


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (data.source)")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of timings (median)")
    args = parser.parse_args()

    import pipeline.train as train

    with tempfile.TemporaryDirectory() as scratch:
        overrides = [
            "experiment=cpu",
            f"data.source={args.data.resolve()}",
            f"paths.split_dir={scratch}/split",
            f"paths.cache_dir={scratch}/cache",
            f"paths.models_dir={scratch}/models",
            f"paths.reports_dir={scratch}/reports",
            f"tracking.uri=sqlite:///{scratch}/mlflow.db",
            "tracking.system_metrics=false",
        ]
        config = compose(overrides)
        run_split(config)
        train.run(config)  # fills the cache: decoded images, features, exported and compiled network
        split, cache = Split.read(config.paths.split_dir), disk.DiskCache(config.paths.cache_dir)
        arrays = Path(config.paths.cache_dir) / "arrays"
        networks = Path(config.paths.cache_dir) / "frozen-networks"
        cards = {p: json.loads(p.read_text()) for p in arrays.glob("*.card.json")}
        kinds = {kind: [p for p in cards if p.name.startswith(kind)] for kind in ("features", "decoded")}

        def prove(kind: str) -> None:
            for card in kinds[kind]:
                content = card.with_name(card.name.replace(".card.json", ".npy"))
                assert disk.proven(content, cards[card]["sha256"], cards[card]["bytes"])

        def prove_networks() -> None:
            for card in networks.rglob("*.card.json"):
                folder = card.with_name(card.name.removesuffix(".card.json"))
                recorded = json.loads(card.read_text())
                assert disk.folder_proven(folder, card, recorded["made_from"])

        rows = []
        for _ in range(args.rounds):
            plain = timed(lambda: train.run(config))
            disk._verified.clear()  # as a new process: nothing proven yet
            checks = {
                "images against the manifest": timed(lambda: split.require_unchanged(cache)),
                "networks against their cards": timed(prove_networks),
                "features (train, val)": timed(lambda: prove("features")),
                "decoded (train, val; augmented runs)": timed(lambda: prove("decoded")),
            }
            rows.append((plain, checks))

    print(f"machine: {cpu_model()}; {args.rounds} rounds, median seconds")
    plain = statistics.median(r[0] for r in rows)
    print(f"| part | seconds | share of a plain run |\n|---|---|---|\n| a plain run (train stage) | {plain:.2f} | |")
    for name in rows[0][1]:
        seconds = statistics.median(r[1][name] for r in rows)
        print(f"| {name} | {seconds:.3f} | {100 * seconds / plain:.2f}% |")
    plain_checks = [sum(v for k, v in checks.items() if not k.startswith("decoded")) / run_s for run_s, checks in rows]
    augmented = [sum(checks.values()) / run_s for run_s, checks in rows]
    print(f"augmented run's checks (with the decoded images): {100 * statistics.median(augmented):.2f}% of a plain run")
    print(f"verification_share={100 * statistics.median(plain_checks):.2f}")


if __name__ == "__main__":
    main()
