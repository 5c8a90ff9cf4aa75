"""Typed configuration: the schema behind `conf/`, every key with its default, unit and range.

The augmentation and compare sections' schemas are `augmentation.py` and `compare.py` beside this;
composing and validating a config is `compose.py`, the command line `cli.py`. `conf/schema/*.yaml`
is generated from the dataclasses (`python -m pipeline.config.reference --write`), so every default
is written once, here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.config import did_you_mean, group_options
from pipeline.config.augmentation import AugmentationConfig
from pipeline.config.compare import CompareConfig, SearchConfig

MODEL_NAMES = ("xception", "mobilenet_v2", "efficientnet_b0", "efficientnet_lite0", "residual_cnn")
LR_SCHEDULES = ("constant", "warmup_cosine")
OPTIMIZERS = ("adam", "sgd")
STRATEGIES = ("auto", "none", "mirrored", "multi_worker")
FROZEN_RUNTIMES = ("auto", "openvino", "tensorflow")  # frozen_runtime.RUNTIMES, without loading TensorFlow
FROZEN_PRECISIONS = ("f32", "bf16")
DEFAULT_CACHE_DIR = "~/.cache/augment-pipeline"  # paths.cache_dir and data.download_dir


# --------------------------------------------------------------------------- schema


@dataclass
class SplitConfig:
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # [train, val, test], stratified, seeded
    respect_existing: bool = True  # keep a source's own train/ validation/ test/ folders as the split
    train_val_per_seed: bool = False  # each run draws its own train/val split from the manifests' train and
    # val images with its seed (stratified, each class's val count kept; test stays fixed), so that a
    # verdict covers other splits of the data; false: the split stage's train and val

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if len(self.fractions) != 3:
            found.append(("fractions", f"needs 3 numbers [train, val, test], got {list(self.fractions)}"))
        elif any(f < 0 for f in self.fractions) or self.fractions[0] <= 0:
            found.append(("fractions", f"each must be >= 0 and train > 0, got {list(self.fractions)}"))
        elif not math.isclose(sum(self.fractions), 1.0, abs_tol=1e-6):
            found.append(("fractions", f"must sum to 1, got {list(self.fractions)} (sum {sum(self.fractions):g})"))
        return found


@dataclass
class DataConfig:
    source: str = "https://github.com/alexeygrigorev/clothing-dataset-small/archive/refs/heads/master.zip"  # folder,
    # .zip/.tar.gz or http(s) URL of one: one folder per class, or train/ validation/ test/ folders
    sha256: Optional[str] = None  # pins a URL's or archive's content: a different download is refused
    download_dir: str = DEFAULT_CACHE_DIR  # downloads and extractions, keyed by content
    image_size: list[int] = field(default_factory=lambda: [150, 150])  # [height, width], pixels
    limit_per_class: Optional[int] = None  # at most this many images per class (quick trials); null: all
    split: SplitConfig = field(default_factory=SplitConfig)
    cache: str = "auto"  # decoded images and frozen features kept in paths.cache_dir for the next run: auto (in
    # memory, said once, where that folder cannot be written) | file (there, or an error) | memory (never kept)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if len(self.image_size) != 2 or any(s < 8 or s > 4096 for s in self.image_size):
            found.append(("image_size", f"needs [height, width], each in 8..4096 pixels, got {list(self.image_size)}"))
        if self.limit_per_class is not None and self.limit_per_class < 1:
            found.append(("limit_per_class", f"must be >= 1 or null, got {self.limit_per_class}"))
        if self.cache not in ("auto", "memory", "file"):
            found.append(("cache", f"must be one of auto, memory, file, got {self.cache!r}"))
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in self.sha256)
        ):
            found.append(("sha256", "must be a 64-character hex digest or null"))
        return found


@dataclass
class ModelConfig:
    """A classifier: a backbone (pretrained or from scratch) under the lesson's head.

    A pretrained base runs in inference mode (its BatchNorm statistics never move). It is
    frozen, trained whole (`trainable_base`), or fine-tuned from one of its layers on
    (`fine_tune_from`, a layer-name prefix such as `block12` of efficientnet_lite0 or
    `block13` of xception) at its own `fine_tune_learning_rate`; BatchNorm stays frozen.
    """

    name: str = "xception"  # the backbone (conf/model/): xception, efficientnet_lite0, ..., residual_cnn
    weights: Optional[str] = "imagenet"  # imagenet | null | path to a local weights file
    trainable_base: bool = False  # train the whole pretrained base too (false: frozen, the lesson)
    inner_units: int = 100  # the head's inner dense layer; 0: softmax on the pooled features
    dropout: float = 0.2  # before the softmax
    learning_rate: float = 0.001  # of the head (and of a base trained whole)
    fine_tune_from: Optional[str] = None  # unfreeze the base from the first layer named <prefix>... on
    fine_tune_learning_rate: float = 1e-5  # of the unfrozen base layers
    frozen_runtime: str = "auto"  # where frozen layers run: auto (OpenVINO on a CPU when installed,
    # else TensorFlow) | openvino | tensorflow
    frozen_precision: str = "f32"  # of the frozen layers: f32 (exact) | bf16 (OpenVINO, CPUs with bf16: faster)
    residual_stages: list[list[int]] = field(default_factory=lambda: [[64, 2], [128, 2], [256, 1]])  # residual_cnn:
    # [filters, blocks] per stage, each stage halving the resolution (a smaller network for quick trials)

    @property
    def pretrained(self) -> bool:
        """True for a backbone that starts from trained weights (ImageNet or a file)."""
        return self.name != "residual_cnn" and self.weights not in (None, "null", "none")

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.name not in MODEL_NAMES:
            found.append(("name", f"must be one of {', '.join(MODEL_NAMES)}, got {self.name!r}"))
        if self.fine_tune_from is not None:
            if self.name == "residual_cnn":
                found.append(
                    (
                        "fine_tune_from",
                        "residual_cnn trains from scratch, whole: there is no pretrained "
                        "base to fine-tune (set model.fine_tune_from=null)",
                    )
                )
            elif self.trainable_base:
                found.append(
                    ("fine_tune_from", "model.trainable_base=true already trains the whole base: use one of the two")
                )
        if self.frozen_runtime not in FROZEN_RUNTIMES:
            found.append(
                ("frozen_runtime", f"must be one of {', '.join(FROZEN_RUNTIMES)}, got {self.frozen_runtime!r}")
            )
        if self.frozen_precision not in FROZEN_PRECISIONS:
            found.append(
                ("frozen_precision", f"must be one of {', '.join(FROZEN_PRECISIONS)}, got {self.frozen_precision!r}")
            )
        if not 0 < self.fine_tune_learning_rate <= 1:
            found.append(("fine_tune_learning_rate", f"must be in (0, 1], got {self.fine_tune_learning_rate}"))
        if self.inner_units < 0:
            found.append(("inner_units", f"must be >= 0, got {self.inner_units}"))
        if not 0 <= self.dropout < 1:
            found.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if not 0 < self.learning_rate <= 1:
            found.append(("learning_rate", f"must be in (0, 1], got {self.learning_rate}"))
        stages = [list(stage) for stage in self.residual_stages]
        if not 1 <= len(stages) <= 6 or any(len(s) != 2 or s[0] < 1 or s[1] < 1 for s in stages):
            found.append(("residual_stages", f"needs 1 to 6 [filters, blocks] pairs, each >= 1, got {stages}"))
        return found


@dataclass
class TrainConfig:
    epochs: int = 10  # the cap; early stopping (patience) usually ends a run before it
    batch_size: int = 32  # the global batch (split over replicas)
    patience: int = 5  # epochs without a val_accuracy gain before stopping
    resume: bool = False  # continue this configuration's interrupted training from its last epoch
    rerun: bool = False  # in a multirun, train even if this configuration has a FINISHED run
    mixed_precision: bool = False  # float16 compute (GPUs), float32 weights
    jit_compile: Any = "auto"  # XLA for the train step: auto (on a GPU only) | true | false
    strategy: str = "auto"  # auto | none | mirrored (the GPUs of a machine) | multi_worker (TF_CONFIG)
    optimizer: str = "adam"  # adam (AdamW when weight_decay > 0) | sgd (Nesterov momentum 0.9)
    lr_schedule: str = "constant"  # constant | warmup_cosine (peak: model.learning_rate)
    warmup_epochs: int = 1  # linear warm-up of warmup_cosine, in epochs
    weight_decay: float = 0.0  # decoupled weight decay, per unit of learning rate; 0 = none
    label_smoothing: float = 0.0  # of the cross-entropy targets, 0..1
    cache_features: bool = True  # frozen base: the head trains on its features (plain ones computed once)
    augment_views: int = 3  # a frozen base or bottom + augmentation: augmented views per image, computed by the first
    # epochs and reused by later ones (0: a fresh view every epoch)
    test_in_sweeps: bool = True  # in a multirun, each job evaluates its best model on the test split

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.optimizer not in OPTIMIZERS:
            found.append(("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"))
        if self.lr_schedule not in LR_SCHEDULES:
            found.append(("lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"))
        if self.warmup_epochs < 0:
            found.append(("warmup_epochs", f"must be >= 0, got {self.warmup_epochs}"))
        if not 0 <= self.weight_decay < 1:
            found.append(("weight_decay", f"must be in [0, 1), got {self.weight_decay}"))
        if not 0 <= self.label_smoothing < 1:
            found.append(("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}"))
        if self.epochs < 1:
            found.append(("epochs", f"must be >= 1, got {self.epochs}"))
        if not 1 <= self.batch_size <= 4096:
            found.append(("batch_size", f"must be in 1..4096, got {self.batch_size}"))
        if self.augment_views < 0:
            found.append(("augment_views", f"must be >= 0 (0: a fresh view every epoch), got {self.augment_views}"))
        if self.patience < 1:
            found.append(("patience", f"must be >= 1, got {self.patience}"))
        if self.jit_compile not in ("auto", True, False):
            found.append(("jit_compile", f"must be auto, true or false, got {self.jit_compile!r}"))
        if self.strategy not in STRATEGIES:
            found.append(("strategy", f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"))
        return found


@dataclass
class EvaluateConfig:
    """`python -m pipeline.evaluate`: how the trained model is tested."""

    tta: str = "none"  # test-time augmentation, logged beside the plain test metrics as tta_test_*: none |
    # flip (each test image and its mirror) | a preset of conf/augmentation/ (the image and tta_views draws of it)
    tta_views: int = 4  # augmented views per test image besides the image itself, with tta=<preset>
    tta_seed: int = 0  # the draws of those views: one seed for every run, so that runs see the same views

    def tta_record(self) -> str | None:
        """What a run records of its TTA (tag `evaluate.tta`): `flip`, or `lesson x4 seed 0`; None for none."""
        if self.tta in ("none", "flip"):
            return None if self.tta == "none" else "flip"
        return f"{self.tta} x{self.tta_views} seed {self.tta_seed}"

    def problems(self) -> list[tuple[str, str]]:
        found = []
        choices = ["none", "flip", *group_options("augmentation")]
        if self.tta not in choices:
            hint = did_you_mean(self.tta, choices)
            found.append(("tta", f"must be none, flip or a preset of conf/augmentation/, got {self.tta!r}{hint}"))
        if not 1 <= self.tta_views <= 64:
            found.append(("tta_views", f"must be in 1..64, got {self.tta_views}"))
        return found


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # MLflow store; null: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db
    experiment: str = "augmentation"  # the MLflow experiment of the training runs
    log_model: bool = True  # log the model as the run's LoggedModel `model`
    registered_model: Optional[str] = None  # the registry name for compare.register; null: the experiment's name
    system_metrics: bool = True  # CPU, memory, GPU of training runs as system/* metrics
    system_metrics_interval_s: float = 10.0  # between samples, seconds
    server_patience_s: float = 900.0  # a tracking server away this long (seconds) stops training; shorter: it
    # goes on, and what it could not log is logged when the server is back

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not 0.1 <= self.system_metrics_interval_s <= 3600:
            found.append(
                ("system_metrics_interval_s", f"must be in [0.1, 3600] seconds, got {self.system_metrics_interval_s}")
            )
        if self.server_patience_s < 0:
            found.append(("server_patience_s", f"must be >= 0 seconds, got {self.server_patience_s}"))
        return found

    @property
    def model_name(self) -> str:
        """The registered model's name."""
        return self.registered_model or self.experiment


@dataclass
class PathsConfig:
    split_dir: str = "data/split"  # the manifests (train/val/test.csv) and classes.json
    reports_dir: str = "reports"  # metrics, per-class results, pictures, the comparison
    models_dir: str = "models"  # model.keras, classes.json and work/ (resumable checkpoints)
    cache_dir: str = DEFAULT_CACHE_DIR  # converted frozen networks, decoded images and their
    # features, kept by content for the next run (the least recently used go past 8 GiB)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 42  # the split, the initialisation, the data order and the augmentation draws

    def problems(self) -> list[tuple[str, str]]:
        found = [] if 0 <= self.seed < 2**31 else [("seed", f"must be in 0..2**31-1, got {self.seed}")]
        return found + self._shifts_out_of_frame()

    def _shifts_out_of_frame(self) -> list[tuple[str, str]]:
        """A shift in pixels (>= 1) as large as the image moves it out of the frame entirely."""
        found = []
        if len(self.data.image_size) != 2:
            return found  # data.image_size says so itself
        for key, size, side in (
            ("width_shift_range", self.data.image_size[1], "width"),
            ("height_shift_range", self.data.image_size[0], "height"),
        ):
            shift = getattr(self.augmentation, key)
            if shift >= 1 and shift >= size:
                found.append(
                    (
                        f"augmentation.{key}",
                        f"{shift:g} pixels moves every image out of its {size}-pixel {side} (data.image_size); "
                        f"use fewer pixels, or a fraction of the {side} below 1 (0.1 = 10%)",
                    )
                )
        return found
