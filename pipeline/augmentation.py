"""Batch augmentation: ImageDataGenerator's transforms as one fused warp, plus modern ops.

How a batch is augmented:

1. `sample_params` draws every random number of the batch at once from a stateless seed
   (`[seed, counter]`), so the same seed gives the same draws in any process, in any
   tf.data parallelism, and a new counter (next batch, next epoch) gives new draws.
2. `apply_params` composes rotation, shift, shear, zoom and flips of each image into one
   3x3 matrix and resamples the image once (bilinear), then applies the photometric ops
   (brightness, channel shift, contrast, saturation, hue, RandAugment's colour ops) and
   random erasing, all vectorised over the batch. It is written from XLA-compilable ops,
   so it runs jit-compiled in tf.data on the CPU and inside a compiled train step on a GPU.
3. `mix_batch` (MixUp / CutMix) mixes images *and* labels, so it always runs in tf.data.

Images are float32 in pixel units [0, 255], shape [batch, height, width, 3]; the model's
own preprocessing comes after augmentation, as with ImageDataGenerator.

Matrix convention (as ImageDataGenerator's `apply_affine_transform`): the matrix maps an
output pixel (x=column, y=row, 1) to the input point it samples, about the image centre:
M = C · R(theta) · T(tx, ty) · Sh(shear) · Z(zx, zy) · C⁻¹, followed by the flips.
"""

from __future__ import annotations

import math

from pipeline.backend import tf
from pipeline.config.augmentation import AugmentationConfig

# RandAugment's operation list (Cubuk et al. 2019, without equalize/sharpness/invert).
RANDAUGMENT_OPS = (
    "identity",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "brightness",
    "contrast",
    "color",
    "solarize",
    "posterize",
    "autocontrast",
)
_RA = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}


def _signed(u: tf.Tensor) -> tf.Tensor:
    """Map uniform [0, 1) draws to [-1, 1)."""
    return 2.0 * u - 1.0


def shift_in_pixels(shift_range: float, size: int) -> float:
    """ImageDataGenerator's rule: < 1 is a fraction of the size, >= 1 is pixels."""
    return shift_range * size if shift_range < 1 else float(shift_range)


def sample_params(
    config: AugmentationConfig, batch_size: tf.Tensor | int, image_size: tuple[int, int], seed: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Draw the per-image parameters of one batch. `seed` is an int32/int64 [2] tensor.

    Units: angle and shear in degrees, shifts in pixels, zoom/brightness/contrast/saturation
    as factors, hue in turns, channel shift in pixel units.
    """
    height, width = image_size
    b = batch_size
    u = tf.random.stateless_uniform([b, 20], seed=seed)
    zoom_lo, zoom_hi = config.zoom_bounds()
    params = {
        "angle": _signed(u[:, 0]) * config.rotation_range,
        "shift_x": _signed(u[:, 1]) * shift_in_pixels(config.width_shift_range, width),
        "shift_y": _signed(u[:, 2]) * shift_in_pixels(config.height_shift_range, height),
        "shear": _signed(u[:, 3]) * config.shear_range,
        "shear_y": tf.zeros([b]),
        "zoom_x": zoom_lo + u[:, 4] * (zoom_hi - zoom_lo),
        "zoom_y": zoom_lo + u[:, 5] * (zoom_hi - zoom_lo),
        "flip_h": tf.cast(u[:, 6] < 0.5, tf.float32) if config.horizontal_flip else tf.zeros([b]),
        "flip_v": tf.cast(u[:, 7] < 0.5, tf.float32) if config.vertical_flip else tf.zeros([b]),
        "brightness": tf.ones([b]),
        "channel_shift": _signed(u[:, 9]) * config.channel_shift_range,
        "contrast": 1.0 + _signed(u[:, 10]) * config.contrast_range,
        "saturation": 1.0 + _signed(u[:, 11]) * config.saturation_range,
        "hue": _signed(u[:, 12]) * config.hue_range,
        "solarize": tf.fill([b], 256.0),  # threshold; 256 = off
        "posterize_bits": tf.fill([b], 8.0),
        "autocontrast": tf.zeros([b]),
    }
    if config.brightness_range is not None:
        lo, hi = config.brightness_range
        params["brightness"] = lo + u[:, 8] * (hi - lo)

    erasing = config.random_erasing
    if erasing.probability > 0:
        area = (erasing.area[0] + u[:, 14] * (erasing.area[1] - erasing.area[0])) * height * width
        log_lo, log_hi = math.log(erasing.aspect[0]), math.log(erasing.aspect[1])
        aspect = tf.exp(log_lo + u[:, 15] * (log_hi - log_lo))
        params["erase_h"] = tf.minimum(tf.sqrt(area * aspect), float(height))
        params["erase_w"] = tf.minimum(tf.sqrt(area / aspect), float(width))
        params["erase_y"] = u[:, 16] * (height - params["erase_h"])
        params["erase_x"] = u[:, 17] * (width - params["erase_w"])
        params["erase_on"] = tf.cast(u[:, 13] < erasing.probability, tf.float32)
        params["erase_colour"] = tf.random.stateless_uniform([b, 3], seed=_fold(seed, 2), maxval=255.0)

    if config.randaugment.num_ops > 0:
        _add_randaugment(params, config, b, image_size, seed)
    return params


def _fold(seed: tf.Tensor, data: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), data)


def _add_randaugment(params: dict, config: AugmentationConfig, b, image_size, seed) -> None:
    """Choose `num_ops` ops per image; geometric ones join the fused warp."""
    height, width = image_size
    level = config.randaugment.magnitude / 30.0
    picks = tf.random.stateless_uniform(
        [b, config.randaugment.num_ops], seed=_fold(seed, 1), minval=0, maxval=len(RANDAUGMENT_OPS), dtype=tf.int32
    )
    count = tf.reduce_sum(tf.one_hot(picks, len(RANDAUGMENT_OPS)), axis=1)  # [b, ops]
    sign = tf.sign(_signed(tf.random.stateless_uniform([b, len(RANDAUGMENT_OPS)], seed=_fold(seed, 3))) + 1e-6)

    def amount(op: str) -> tf.Tensor:
        return count[:, _RA[op]] * sign[:, _RA[op]] * level

    params["angle"] += 30.0 * amount("rotate")
    params["shear"] += math.degrees(math.atan(0.3)) * amount("shear_x")
    params["shear_y"] += math.degrees(math.atan(0.3)) * amount("shear_y")
    params["shift_x"] += 0.45 * width * amount("translate_x")
    params["shift_y"] += 0.45 * height * amount("translate_y")
    params["brightness"] *= 1.0 + 0.9 * amount("brightness")
    params["contrast"] *= 1.0 + 0.9 * amount("contrast")
    params["saturation"] *= 1.0 + 0.9 * amount("color")
    params["solarize"] = tf.where(count[:, _RA["solarize"]] > 0, 256.0 - 256.0 * level, 256.0)
    params["posterize_bits"] = tf.where(count[:, _RA["posterize"]] > 0, 8.0 - round(4 * level), 8.0)
    params["autocontrast"] = tf.cast(count[:, _RA["autocontrast"]] > 0, tf.float32)


# ------------------------------------------------------------------ geometry


def affine_matrices(params: dict[str, tf.Tensor], image_size: tuple[int, int]) -> tf.Tensor:
    """Compose each image's geometry into one [batch, 3, 3] output->input matrix."""
    height, width = image_size
    theta = params["angle"] * (math.pi / 180.0)
    shear = params["shear"] * (math.pi / 180.0)
    shear_y = params["shear_y"] * (math.pi / 180.0)
    zeros, ones = tf.zeros_like(theta), tf.ones_like(theta)

    def matrix(rows):
        return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)

    rotation = matrix(
        [[tf.cos(theta), -tf.sin(theta), zeros], [tf.sin(theta), tf.cos(theta), zeros], [zeros, zeros, ones]]
    )
    shift = matrix([[ones, zeros, params["shift_x"]], [zeros, ones, params["shift_y"]], [zeros, zeros, ones]])
    shear_m = matrix([[ones, -tf.sin(shear), zeros], [zeros, tf.cos(shear), zeros], [zeros, zeros, ones]])
    shear_y_m = matrix([[tf.cos(shear_y), zeros, zeros], [-tf.sin(shear_y), ones, zeros], [zeros, zeros, ones]])
    zoom = matrix([[params["zoom_x"], zeros, zeros], [zeros, params["zoom_y"], zeros], [zeros, zeros, ones]])
    cx, cy = width / 2.0 - 0.5, height / 2.0 - 0.5
    to_centre = matrix([[ones, zeros, cx * ones], [zeros, ones, cy * ones], [zeros, zeros, ones]])
    from_centre = matrix([[ones, zeros, -cx * ones], [zeros, ones, -cy * ones], [zeros, zeros, ones]])
    # Flips act on the warped image: output x reads warped x' = (w-1) - x.
    fh, fv = params["flip_h"], params["flip_v"]
    flips = matrix(
        [[1.0 - 2.0 * fh, zeros, fh * (width - 1)], [zeros, 1.0 - 2.0 * fv, fv * (height - 1)], [zeros, zeros, ones]]
    )
    m = rotation @ shift @ shear_m @ shear_y_m @ zoom
    return to_centre @ m @ from_centre @ flips


def _fill_index(i: tf.Tensor, n: int, fill_mode: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Map integer sample coordinates into [0, n) by the fill mode; also return 'inside' mask."""
    inside = tf.logical_and(i >= 0, i <= n - 1)
    if fill_mode == "reflect":  # d c b a | a b c d | d c b a
        j = tf.math.floormod(i, 2 * n)
        i = tf.where(j >= n, 2 * n - 1 - j, j)
    elif fill_mode == "wrap":
        i = tf.math.floormod(i, n)
    else:  # nearest, and constant (masked later)
        i = tf.clip_by_value(i, 0, n - 1)
    return i, inside


def warp_images(images: tf.Tensor, matrices: tf.Tensor, fill_mode: str = "nearest", cval: float = 0.0) -> tf.Tensor:
    """Resample each image once through its matrix (bilinear); XLA-compilable gathers.

    `images` may be uint8 (gathered as bytes, a quarter of the memory traffic) or float;
    the result is float32.
    """
    shape = tf.shape(images)
    b, h, w, c = shape[0], images.shape[1], images.shape[2], images.shape[3]
    ys, xs = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    grid = tf.reshape(tf.stack([xs, ys, tf.ones_like(xs)], axis=0), [3, h * w])
    source = tf.matmul(matrices, tf.broadcast_to(grid, [b, 3, h * w]))  # [b, 3, hw]
    sx, sy = source[:, 0, :], source[:, 1, :]
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    flat = tf.reshape(images, [b, h * w, c])

    def sample(yi, xi):
        xi, x_in = _fill_index(xi, w, fill_mode)
        yi, y_in = _fill_index(yi, h, fill_mode)
        values = tf.cast(tf.gather(flat, yi * w + xi, batch_dims=1), tf.float32)
        if fill_mode == "constant":
            values = tf.where(tf.logical_and(x_in, y_in)[..., None], values, cval)
        return values

    out = (
        sample(y0, x0) * (1 - fx) * (1 - fy)
        + sample(y0, x0 + 1) * fx * (1 - fy)
        + sample(y0 + 1, x0) * (1 - fx) * fy
        + sample(y0 + 1, x0 + 1) * fx * fy
    )
    return tf.reshape(out, [b, h, w, c])


# ------------------------------------------------------------------ colour and erasing


def _per_image(values: tf.Tensor) -> tf.Tensor:
    return values[:, None, None, None]


def _grayscale(images: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def has_colour_ops(config: AugmentationConfig) -> bool:
    return bool(
        config.channel_shift_range
        or config.brightness_range is not None
        or config.contrast_range
        or config.saturation_range
        or config.hue_range
        or config.randaugment.num_ops
        or config.random_erasing.probability
    )


def adjust_colours(images: tf.Tensor, params: dict[str, tf.Tensor], config: AugmentationConfig) -> tf.Tensor:
    """Photometric ops, each a no-op at its neutral value; output clipped to [0, 255]."""
    x = images
    if config.channel_shift_range > 0:  # as ImageDataGenerator: clip to the image's own range
        lo = tf.reduce_min(x, axis=[1, 2, 3], keepdims=True)
        hi = tf.reduce_max(x, axis=[1, 2, 3], keepdims=True)
        x = tf.clip_by_value(x + _per_image(params["channel_shift"]), lo, hi)
    x = x * _per_image(params["brightness"])
    mean = tf.reduce_mean(_grayscale(x), axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * _per_image(params["contrast"]) + mean
    gray = _grayscale(x)
    x = (x - gray) * _per_image(params["saturation"]) + gray
    x = tf.clip_by_value(x, 0.0, 255.0)
    if config.hue_range > 0:
        hsv = tf.image.rgb_to_hsv(x / 255.0)
        hue = tf.math.floormod(hsv[..., :1] + _per_image(params["hue"]), 1.0)
        x = tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1)) * 255.0
    if config.randaugment.num_ops > 0:
        x = tf.where(x >= _per_image(params["solarize"]), 255.0 - x, x)
        step = tf.pow(2.0, 8.0 - _per_image(params["posterize_bits"]))
        x = tf.floor(x / step) * step
        lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
        hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
        stretched = (x - lo) * 255.0 / tf.maximum(hi - lo, 1.0)
        x = tf.where(_per_image(params["autocontrast"]) > 0, stretched, x)
    return x


def erase_rectangles(images: tf.Tensor, params: dict[str, tf.Tensor]) -> tf.Tensor:
    """Random erasing (cutout): fill one rectangle per chosen image with a random colour."""
    h, w = images.shape[1], images.shape[2]
    ys = tf.range(h, dtype=tf.float32)[None, :, None]
    xs = tf.range(w, dtype=tf.float32)[None, None, :]
    top, left = params["erase_y"][:, None, None], params["erase_x"][:, None, None]
    inside = (
        (ys >= top)
        & (ys < top + params["erase_h"][:, None, None])
        & (xs >= left)
        & (xs < left + params["erase_w"][:, None, None])
        & (params["erase_on"][:, None, None] > 0)
    )
    return tf.where(inside[..., None], params["erase_colour"][:, None, None, :], images)


def apply_params(images: tf.Tensor, params: dict[str, tf.Tensor], config: AugmentationConfig) -> tf.Tensor:
    """Augment a float32 [b, h, w, 3] batch in pixel units with drawn parameters."""
    return apply_colours(apply_geometry(images, params, config), params, config)


def apply_geometry(images: tf.Tensor, params: dict[str, tf.Tensor], config: AugmentationConfig) -> tf.Tensor:
    image_size = (images.shape[1], images.shape[2])
    return warp_images(images, affine_matrices(params, image_size), config.fill_mode, config.cval)


def apply_colours(images: tf.Tensor, params: dict[str, tf.Tensor], config: AugmentationConfig) -> tf.Tensor:
    if not has_colour_ops(config):
        return images
    x = adjust_colours(images, params, config)
    return erase_rectangles(x, params) if "erase_on" in params else x


# ------------------------------------------------------------------ MixUp / CutMix


def _beta(alpha: float, shape, seed) -> tf.Tensor:
    a = tf.random.stateless_gamma(shape, seed=_fold(seed, 10), alpha=alpha)
    b = tf.random.stateless_gamma(shape, seed=_fold(seed, 11), alpha=alpha)
    return a / (a + b)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, config: AugmentationConfig, seed: tf.Tensor):
    """MixUp or CutMix with the batch reversed as partner; labels are one-hot floats."""
    if config.mixup_alpha <= 0 and config.cutmix_alpha <= 0:
        return images, labels
    b = tf.shape(images)[0]
    partner_images, partner_labels = tf.reverse(images, [0]), tf.reverse(labels, [0])
    if config.mixup_alpha > 0:
        lam = _beta(config.mixup_alpha, [b], seed)
        mixed = images * _per_image(lam) + partner_images * (1 - _per_image(lam))
        return mixed, labels * lam[:, None] + partner_labels * (1 - lam[:, None])
    h, w = images.shape[1], images.shape[2]
    lam = _beta(config.cutmix_alpha, [b], seed)
    u = tf.random.stateless_uniform([b, 2], seed=_fold(seed, 12))
    cut_h, cut_w = tf.sqrt(1 - lam) * h, tf.sqrt(1 - lam) * w
    cy, cx = u[:, 0] * h, u[:, 1] * w
    y0, y1 = tf.clip_by_value(cy - cut_h / 2, 0, h), tf.clip_by_value(cy + cut_h / 2, 0, h)
    x0, x1 = tf.clip_by_value(cx - cut_w / 2, 0, w), tf.clip_by_value(cx + cut_w / 2, 0, w)
    ys = tf.range(h, dtype=tf.float32)[None, :, None]
    xs = tf.range(w, dtype=tf.float32)[None, None, :]
    box = (ys >= y0[:, None, None]) & (ys < y1[:, None, None]) & (xs >= x0[:, None, None]) & (xs < x1[:, None, None])
    mixed = tf.where(box[..., None], partner_images, images)
    kept = 1.0 - tf.reduce_mean(tf.cast(box, tf.float32), axis=[1, 2])  # label weight: pixels actually kept
    return mixed, labels * kept[:, None] + partner_labels * (1 - kept[:, None])


# ------------------------------------------------------------------ entry points


class BatchAugmenter:
    """Augments whole batches: `augmenter(images, seed)`; seed is an int [2] tensor.

    `sample` draws with ordinary TF ops (the same numbers with or without XLA); `apply`
    does the resampling and colour work jit-compiled (XLA), once per batch shape.
    tf.data callers map `sample` and `apply` as two steps, so XLA sees `apply` whole.
    """

    def __init__(self, config: AugmentationConfig, image_size: tuple[int, int], jit_compile: bool = True):
        self.config = config
        self.image_size = tuple(image_size)
        # Two XLA clusters: fused into one, XLA re-computes the warp's gathers inside
        # the colour ops' reductions (measured 4x slower on the CPU).
        self._geometry = tf.function(
            lambda images, params: apply_geometry(images, params, config), jit_compile=jit_compile
        )
        self._colours = tf.function(
            lambda images, params: apply_colours(images, params, config), jit_compile=jit_compile
        )

    def sample(self, batch_size, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        return sample_params(self.config, batch_size, self.image_size, seed)

    def apply(self, images: tf.Tensor, params: dict[str, tf.Tensor]) -> tf.Tensor:
        if self.config.is_identity:
            return tf.cast(images, tf.float32)
        images = self._geometry(images, params)
        return self._colours(images, params) if has_colour_ops(self.config) else images

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return self.apply(images, self.sample(tf.shape(images)[0], seed))


def augmentation_layer(config: AugmentationConfig, seed: int):
    """A Keras layer that augments inside the model (`augmentation.placement=model`), training only.

    It draws from [seed, step] with its own step counter, so each batch differs; it is
    built from XLA-compilable ops and so keeps a jit-compiled train step compiled.
    """
    from pipeline.backend import keras

    class Augment(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.step = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False, name="step")

        def call(self, images, training=None):
            if not training or config.is_identity:
                return images
            self.step.assign_add(1)
            seed_pair = tf.stack([tf.constant(seed, tf.int64), tf.cast(self.step, tf.int64)])
            params = sample_params(config, tf.shape(images)[0], (images.shape[1], images.shape[2]), seed_pair)
            return apply_params(images, params, config)

    return Augment(name="augment")
