"""What a comparison works with: a training run as read back from MLflow (`RunSummary`), a group
of runs that differ only by seed (`Group`), and one group against another (`Difference`).
Accuracies are fractions in [0, 1]; differences are in the same units (0.02 = 2 points)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.tracking.identity import AUGMENTED_ONLY  # a plain run's value of these is no setting of its group

DATA_VERSION = "data.version"  # the data a run trained on (its manifests' hash): a setting, read from its tag
TRAIN_VAL = "data.train_val"  # the train and val sets a run used (its tag train_val_sha256): one per seed at most
PER_SEED_SPLIT = "data.split.train_val_per_seed"  # runs on a split drawn per seed are never grouped with others
TTA_MARK = "+tta("  # in the label of a group's test-time augmentation arm: `none+tta(flip)`


@dataclass
class RunSummary:
    """What the comparison needs of one MLflow training run."""

    run_id: str
    preset: str
    seed: str
    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # val_accuracy / val_loss per epoch
    started_ms: int = 0  # start time, to keep the latest of repeated runs
    augmented: bool = True  # its training images were augmented (tag `augmented`)
    test_predictions: dict[str, tuple[str, str]] = field(default_factory=dict)  # image sha256 -> (actual, predicted)
    model_id: str | None = None  # its LoggedModel (`models:/<id>`), None when it logged none

    def setting(self, key: str) -> str | None:
        """The run's value of a grouping key; None where the key does not apply (`AUGMENTED_ONLY`)."""
        return None if key in AUGMENTED_ONLY and not self.augmented else self.params.get(key, "")

    @property
    def ablated(self) -> str | None:
        """The operation this run removed from its preset (`augmentation.ablate`), if any."""
        value = self.params.get("augmentation.ablate")
        return None if value in (None, "", "None", "null") else value

    @property
    def best_epoch(self) -> int | None:
        return int(self.metrics["best_epoch"]) if "best_epoch" in self.metrics else None

    @property
    def converged(self) -> bool | None:
        """Did early stopping see the best epoch out? True when the best epoch came at least
        `train.patience` epochs before the cap (`train.epochs`, or the epochs trained when a
        resume extended them): validation accuracy then had `patience` epochs to improve and
        did not. False when the best epoch falls within the last `patience` epochs of the cap:
        the run may still have been improving. None when unknown."""
        trained = len(self.curves.get("val_accuracy", []))
        if self.best_epoch is None or not trained:
            return None
        cap = max(int(float(self.params.get("train.epochs", trained))), trained)
        patience = int(float(self.params.get("train.patience", 1)))
        return self.best_epoch <= cap - patience

    @property
    def annealed_to_cap(self) -> bool:
        """Its learning rate decays to ~0 at `train.epochs` (warmup_cosine): the smallest steps,
        and often the best epoch, come at the end whatever the cap, so a longer cap stretches
        the schedule rather than showing whether the run had converged."""
        return self.params.get("train.lr_schedule") == "warmup_cosine"

    def final(self, curve: str) -> float | None:
        """The last recorded value of a per-epoch metric (None if not recorded)."""
        values = self.curves.get(curve)
        return values[-1] if values else None


@dataclass
class Group:
    preset: str
    settings: dict[str, str]  # the other varied params, same for every run of the group
    runs: list[RunSummary]
    repeats_dropped: int = 0  # earlier runs of a seed already in the group (a sweep run twice)

    @property
    def label(self) -> str:
        return ", ".join([self.preset, *(f"{k}={v}" for k, v in self.settings.items())])

    @property
    def still_improving(self) -> list[RunSummary]:
        """Its runs whose best epoch came within `train.patience` epochs of their cap."""
        return [r for r in self.runs if r.converged is False]

    def values(self, metric: str) -> dict[str, float]:
        """{seed: metric} for the runs that have it."""
        return {r.seed: r.metrics[metric] for r in self.runs if metric in r.metrics}


@dataclass
class Difference:
    """Group minus baseline, on `metric`, with an interval at `confidence`."""

    group: str
    baseline: str
    metric: str
    n_group: int
    n_baseline: int
    method: str  # "paired over N seeds", "unpaired (Welch) over N and M runs", or "none"
    mean: float
    low: float | None = None  # the verdict's interval: the union of the t and bootstrap intervals
    high: float | None = None
    t_low: float | None = None  # Student t (paired) or Welch t (unpaired)
    t_high: float | None = None
    bootstrap_low: float | None = None  # percentile bootstrap, 10,000 seeded resamples
    bootstrap_high: float | None = None
    p_value: float | None = None  # exact permutation test (sign flips when paired)
    t_p_value: float | None = None  # paired t (Welch t unpaired): the p the correction uses
    p_adjusted: float | None = None  # t_p_value after Holm's correction over the report's comparisons
    family_size: int = 1  # comparisons in that family
    verdict_confidence: float | None = None  # of the verdict's interval (low, high): widened by the correction
    probability_of_improvement: float | None = None
    spread: float = math.nan  # std of the per-seed differences (paired)
    seeds_needed: int | None = None  # seeds that would resolve the observed difference
    seeds_needed_1pt: int | None = None  # ... and a 1-point difference
    verdict: str = "inconclusive"  # keep | drop | equivalent | inconclusive | not converged
    reason: str = ""
    per_seed: dict[str, float] = field(default_factory=dict)  # seed -> difference (paired)
    ours: dict[str, float] = field(default_factory=dict)  # seed -> metric, group
    theirs: dict[str, float] = field(default_factory=dict)  # seed -> metric, baseline
    not_converged: list[str] = field(default_factory=list)  # runs whose best epoch was within patience of the cap
    annealed: bool = False  # some of those runs annealed their learning rate to the cap (warmup_cosine)
    per_class: dict[str, dict] = field(default_factory=dict)  # class -> ClassDifference fields (paired)
    other_splits: list[str] = field(default_factory=list)  # seeds left out: the two runs had different train/val
    diversity: float | None = None  # final training loss, group / baseline
    cost: float | None = None  # training time of a run, group / baseline
    affinity: float | None = None  # baseline models' val accuracy under the augmentation / clean
