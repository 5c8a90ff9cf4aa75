"""The study wing's sections of the schema: `compare` (which runs a comparison reads, against which
baseline, on which metric, and how sure its verdicts must be: `python -m pipeline.compare`,
`pipeline.rounds`) and `search` (`python -m pipeline.search`: how many trials, which are confirmed).

It lives beside `schema.py` rather than in the study wing because every stage's `Config` holds it;
the wing's code reads it, no stage acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline.config import did_you_mean, group_options

MOST_MARGIN = 10.0  # points: compare.margin above this is a typo, not a question (18 for 1.8)
COMPARE_METRICS = ("auto", "test_accuracy", "best_val_accuracy", "test_balanced_accuracy", "test_macro_f1")


@dataclass
class CompareConfig:
    """`python -m pipeline.compare`: which runs, against which baseline, on which metric."""

    baseline: str = "none"  # the preset every other group is compared with
    metric: str = "auto"  # auto: test_accuracy when every compared run has it, else best_val_accuracy;
    # test_balanced_accuracy / test_macro_f1 weigh every class alike
    confidence: float = 0.95  # of the interval on the difference
    filter: Optional[str] = None  # an MLflow search filter, e.g. "params.`model.name` = 'residual_cnn'"
    power: float = 0.8  # for the seeds-needed advice: chance that a study of that size resolves it
    margin: float = 1.0  # points: a difference whose whole corrected interval lies within +-margin is `equivalent`
    rounds: Optional[list[int]] = None  # a sequential study (python -m pipeline.rounds): seeds per group after
    # each round, e.g. [3, 5, 7, 10]; the verdicts spend 1 - confidence over them. null: one fixed set of seeds
    groups: list[str] = field(default_factory=lambda: ["none", "lesson"])  # python -m pipeline.rounds: the
    # groups it trains, presets or <preset>-no-<operation>
    after_sweep: bool = True  # compare the runs of a multirun when it ends (its verdict table)
    register: bool = False  # on a keep verdict: register the winning group's best model, alias champion
    affinity: bool = True  # measure each preset's and operation's affinity with the baseline's models
    # (loads them and TensorFlow; false: skip)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.metric not in COMPARE_METRICS:
            found.append(("metric", f"must be one of {', '.join(COMPARE_METRICS)}, got {self.metric!r}"))
        if not 0.5 <= self.confidence < 1:
            found.append(("confidence", f"must be in [0.5, 1), got {self.confidence}"))
        if not 0.5 <= self.power < 1:
            found.append(("power", f"must be in [0.5, 1), got {self.power}"))
        if not 0 <= self.margin <= MOST_MARGIN:
            found.append(
                (
                    "margin",
                    f"must be in [0, {MOST_MARGIN:g}] points, got {self.margin:g}: the margin is the largest difference "
                    "you would call no difference, and a wider one would call large losses equivalent",
                )
            )
        if self.rounds is not None:
            rounds = list(self.rounds)
            if not rounds or rounds != sorted(set(rounds)) or rounds[0] < 3:
                found.append(
                    ("rounds", f"must be increasing seed counts from 3 up (a verdict needs 3 seeds), got {rounds}")
                )
        return found


@dataclass
class SearchConfig:
    """`python -m pipeline.search`: an Optuna search over augmentation, its best settings confirmed on fresh seeds."""

    space: str = "augmentation"  # the searched keys and ranges (hydra.sweeper.params): an option of
    # conf/hparams_search/ or a YAML file laid out as those; every key an augmentation.* key
    trials: int = 30  # Optuna trials, each a run on seed `seed`, scored on its best val_accuracy
    top_k: int = 3  # the best distinct settings confirmed, each against `none` (Holm-corrected over them)
    seeds: int = 5  # fresh seeds of the confirmation: seed+1 .. seed+seeds, never used by the search

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.trials < 1:
            found.append(("trials", f"must be at least 1, got {self.trials}"))
        if not 1 <= self.top_k <= max(self.trials, 1):
            found.append(("top_k", f"must be in 1..search.trials ({self.trials}), got {self.top_k}"))
        if self.seeds < 3:
            found.append(("seeds", f"must be at least 3 (a verdict needs 3 seeds), got {self.seeds}"))
        spaces = group_options("hparams_search")
        if self.space.endswith((".yaml", ".yml")) and not Path(self.space).expanduser().is_file():
            found.append(
                ("space", f"{self.space} is no file: copy conf/hparams_search/augmentation.yaml there and edit it")
            )
        elif not self.space.endswith((".yaml", ".yml")) and self.space not in spaces:
            found.append(
                (
                    "space",
                    f"there is no conf/hparams_search/{self.space}.yaml; the options are {', '.join(spaces)}"
                    + did_you_mean(self.space, spaces)
                    + ", or a path to a YAML file laid out as those",
                )
            )
        return found
