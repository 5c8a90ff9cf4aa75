"""The augmentation group's schema: every operation the fused warp and the colour/mixing steps
apply, with its units, ranges and defaults (off), and the ablation that removes one of them.

Presets (`conf/augmentation/*.yaml`) set these keys; `augmentation.ablate=<operation>` and
`AugmentationConfig.only(<operation>)` derive a preset without, or with only, one operation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf

from pipeline.config import did_you_mean

FILL_MODES = ("nearest", "reflect", "wrap", "constant")


@dataclass
class RandomErasingConfig:
    probability: float = 0.0  # chance that an image gets one erased rectangle
    area: list[float] = field(default_factory=lambda: [0.02, 0.25])  # fraction of the image area
    aspect: list[float] = field(default_factory=lambda: [0.3, 3.3])  # height / width of the rectangle

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not 0 <= self.probability <= 1:
            found.append(("probability", f"must be in [0, 1], got {self.probability}"))
        if len(self.area) != 2 or not 0 < self.area[0] <= self.area[1] <= 1:
            found.append(("area", f"needs [min, max] with 0 < min <= max <= 1, got {list(self.area)}"))
        if len(self.aspect) != 2 or not 0 < self.aspect[0] <= self.aspect[1]:
            found.append(("aspect", f"needs [min, max] with 0 < min <= max, got {list(self.aspect)}"))
        return found


@dataclass
class RandAugmentConfig:
    num_ops: int = 0  # operations per image; 0 switches RandAugment off
    magnitude: float = 9.0  # 0..30, the paper's scale

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not 0 <= self.num_ops <= 10:
            found.append(("num_ops", f"must be in 0..10, got {self.num_ops}"))
        if not 0 <= self.magnitude <= 30:
            found.append(("magnitude", f"must be in [0, 30], got {self.magnitude}"))
        return found


# The operations an ablation can remove (augmentation.ablate=<operation>), each with the
# settings that switch it off.
ABLATABLE = {
    "rotation": {"rotation_range": 0.0},
    "width_shift": {"width_shift_range": 0.0},
    "height_shift": {"height_shift_range": 0.0},
    "shear": {"shear_range": 0.0},
    "zoom": {"zoom_range": 0.0},
    "horizontal_flip": {"horizontal_flip": False},
    "vertical_flip": {"vertical_flip": False},
    "brightness": {"brightness_range": None},
    "channel_shift": {"channel_shift_range": 0.0},
    "contrast": {"contrast_range": 0.0},
    "saturation": {"saturation_range": 0.0},
    "hue": {"hue_range": 0.0},
    "random_erasing": {"random_erasing": RandomErasingConfig()},
    "randaugment": {"randaugment": RandAugmentConfig()},
    "mixup": {"mixup_alpha": 0.0},
    "cutmix": {"cutmix_alpha": 0.0},
}


NO_ABLATION = (None, "none")


def ablation_label(preset: str, operation: str) -> str:
    """The name of `preset` trained without `operation` (`augmentation.ablate`): the group's label
    in every report."""
    return f"{preset}-no-{operation}"


def read_ablation_label(label: str) -> tuple[str, str | None]:
    """(preset, operation) of an ablation's label; (label, None) for a preset's own."""
    preset, mark, operation = label.rpartition("-no-")
    return (preset, operation) if mark and operation in ABLATABLE else (label, None)


@dataclass
class AugmentationConfig:
    """ImageDataGenerator's argument names and meaning, plus modern operations.

    Geometry (one fused warp): rotation_range in degrees, uniform in (-r, r);
    width/height_shift_range a fraction of the size when < 1, else pixels;
    shear_range in degrees; zoom_range z means scale in [1-z, 1+z] (or a [lo, hi] pair),
    x and y drawn independently, > 1 zooms out; flips with probability 0.5.
    """

    name: str = "none"  # the preset's name: the run's tag `augmentation` and the comparison's group
    placement: str = "auto"  # where the augmentation runs: auto | data (tf.data, CPU) | model (inside the train step)
    rotation_range: float = 0.0  # degrees, uniform in (-r, r)
    width_shift_range: float = 0.0  # horizontal shift: < 1 a fraction of the width, >= 1 pixels
    height_shift_range: float = 0.0  # vertical shift: < 1 a fraction of the height, >= 1 pixels
    shear_range: float = 0.0  # degrees
    zoom_range: Any = 0.0  # z: scale in [1-z, 1+z], or a [lo, hi] pair; > 1 zooms out
    horizontal_flip: bool = False  # mirror left-right with probability 0.5
    vertical_flip: bool = False  # upside down with probability 0.5
    fill_mode: str = "nearest"  # outside the image: nearest | reflect | wrap | constant
    cval: float = 0.0  # fill value for fill_mode=constant, in pixel units 0..255
    brightness_range: Optional[list[float]] = None  # multiplicative factor range, e.g. [0.8, 1.2]
    channel_shift_range: float = 0.0  # added to every channel, pixel units 0..255
    contrast_range: float = 0.0  # factor in [1-c, 1+c] around the image mean
    saturation_range: float = 0.0  # factor in [1-s, 1+s]
    hue_range: float = 0.0  # shift in turns of the colour wheel, uniform in (-h, h), at most 0.5
    random_erasing: RandomErasingConfig = field(default_factory=RandomErasingConfig)
    randaugment: RandAugmentConfig = field(default_factory=RandAugmentConfig)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of image pairs and their labels; 0 = off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) area of a pasted patch, labels mixed by area; 0 = off
    ablate: Optional[str] = None  # an operation to remove (ABLATABLE), named in the label: lesson-no-rotation

    def without(self, operation: str) -> AugmentationConfig:
        """This preset with `operation` switched off."""
        return dataclasses.replace(self, **ABLATABLE[operation])

    def only(self, operation: str) -> AugmentationConfig:
        """`operation` alone, at this preset's magnitude: every other operation switched off
        (what an operation's affinity is measured with), named `<name>-only-<operation>`."""
        alone = self
        for other in self.active_operations():
            if other != operation:
                alone = alone.without(other)
        return dataclasses.replace(alone, name=f"{self.name}-only-{operation}", ablate=None)

    def active_operations(self) -> list[str]:
        """The operations this preset uses, in ABLATABLE's order (what an ablation can remove)."""
        return [op for op in ABLATABLE if self.without(op) != self]

    def with_ablation_applied(self) -> AugmentationConfig:
        """The preset an ablation trains: `ablate` switched off and the name `<name>-no-<ablate>`.
        Idempotent, so an applied config can be validated again (a logged config.yaml)."""
        if self.ablate in NO_ABLATION:
            return dataclasses.replace(self, ablate=None)
        return (
            self.without(self.ablate)
            if read_ablation_label(self.name)[1] == self.ablate
            else dataclasses.replace(self.without(self.ablate), name=ablation_label(self.name, self.ablate))
        )

    def zoom_bounds(self) -> tuple[float, float]:
        """The zoom scale range [lo, hi] that `zoom_range` stands for."""
        z = self.zoom_range
        if isinstance(z, (int, float)):
            return (1.0 - float(z), 1.0 + float(z))
        return (float(z[0]), float(z[1]))

    @property
    def label(self) -> str:
        """The preset name runs are grouped by: `name`, except that a `none` that augments
        (augmentation.rotation_range=10 on the default preset) is `custom`, never the plain baseline."""
        return "custom" if self.name == "none" and not self.is_identity else self.name

    @property
    def is_identity(self) -> bool:
        """True when this preset changes no image (the plain `none` preset)."""
        return self == AugmentationConfig(
            name=self.name, placement=self.placement, fill_mode=self.fill_mode, cval=self.cval, ablate=self.ablate
        )

    def problems(self) -> list[tuple[str, str]]:
        found = []

        def non_negative(key: str, upper: float | None = None) -> None:
            value = getattr(self, key)
            if value < 0 or (upper is not None and value > upper):
                bound = f"[0, {upper}]" if upper is not None else ">= 0"
                found.append((key, f"must be {bound}, got {value}"))

        non_negative("rotation_range", 360)
        non_negative("width_shift_range")
        non_negative("height_shift_range")
        non_negative("shear_range", 89)
        non_negative("channel_shift_range", 255)
        non_negative("contrast_range", 1)
        non_negative("saturation_range", 1)
        non_negative("hue_range", 0.5)
        non_negative("mixup_alpha")
        non_negative("cutmix_alpha")
        z = self.zoom_range
        if isinstance(z, (int, float)):
            if not 0 <= z < 1:
                found.append(("zoom_range", f"a single number must be in [0, 1), got {z}"))
        elif isinstance(z, (list, tuple)) or OmegaConf.is_list(z):
            if len(z) != 2 or not 0 < z[0] <= z[1]:
                found.append(("zoom_range", f"a pair needs 0 < lo <= hi, got {list(z)}"))
        else:
            found.append(("zoom_range", f"must be a number or a [lo, hi] pair, got {z!r}"))
        if self.brightness_range is not None and (
            len(self.brightness_range) != 2 or not 0 <= self.brightness_range[0] <= self.brightness_range[1]
        ):
            found.append(("brightness_range", f"needs [lo, hi] with 0 <= lo <= hi, got {list(self.brightness_range)}"))
        if self.fill_mode not in FILL_MODES:
            found.append(("fill_mode", f"must be one of {', '.join(FILL_MODES)}, got {self.fill_mode!r}"))
        if self.placement not in ("auto", "data", "model"):
            found.append(("placement", f"must be one of auto, data, model, got {self.placement!r}"))
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            found.append(("cutmix_alpha", "use MixUp or CutMix, not both (set mixup_alpha=0 or cutmix_alpha=0)"))
        if self.ablate not in NO_ABLATION:
            active = ", ".join(self.active_operations()) or "none"
            if self.ablate not in ABLATABLE:
                hint = did_you_mean(str(self.ablate), self.active_operations() or list(ABLATABLE))
                found.append(
                    ("ablate", f"must be none or an operation ({', '.join(ABLATABLE)}), got {self.ablate!r}{hint}")
                )
            elif self.ablate not in self.active_operations() and read_ablation_label(self.name)[1] != self.ablate:
                found.append(
                    (
                        "ablate",
                        f"preset {self.name} does not use {self.ablate}, so there is nothing to "
                        f"remove; its operations: {active}",
                    )
                )
        return found
