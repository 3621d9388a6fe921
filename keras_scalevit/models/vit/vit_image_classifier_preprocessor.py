"""Raw images to model inputs, as a checkpoint's evaluation pipeline did."""

import keras
import numpy as np

from keras_scalevit.utils.validation import (
    check_choice,
    check_float,
    check_positive_int,
)

RESIZE_OPS = ("resize", "resize_small")
CROPS = ("central", "top_left")
ACTIVATIONS = ("softmax", "sigmoid", None)


def _pair(name, value):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"`{name}` must be a positive int or a pair (height, width), got "
                f"{value!r}."
            )
        return tuple(check_positive_int(name, v) for v in value)
    v = check_positive_int(name, value)
    return (v, v)


def _size_text(size):
    return str(size[0]) if size[0] == size[1] else f"({size[0]}, {size[1]})"


@keras.saving.register_keras_serializable(package="keras_scalevit")
class ViTImageClassifierPreprocessor:
    """Turns raw images into the inputs a ViT checkpoint was evaluated on.

    Images of any size, ``uint8`` or float in ``[0, 255]`` (floats are rounded
    to ``uint8``, big_vision's ``decode`` output), go through big_vision's evaluation preprocessing, run with
    this library's `keras_scalevit.data` ops (numerically big_vision's):
    ``{resize}({resize_size})``, then ``central_crop(image_size)`` when the resize
    is larger than ``image_size``, then ``value_range(lo, hi)``. The
    `ViTClassifier` returned by ``from_preset`` carries one as ``.preprocessor``
    and applies it in ``predict``; the preset stores it in ``preprocessor.json``,
    together with the class names and the output activation that
    `keras_scalevit.decode_predictions` uses.

    Args:
        image_size: int or (int, int). The model's input size.
        resize: str. ``"resize"`` (both sides to ``resize_size``, bilinear) or
            ``"resize_small"`` (the shorter side to ``resize_size``, area
            interpolation), as big_vision's ops of these names.
        resize_size: int, (int, int) or None. None resizes straight to
            ``image_size``; a larger size is followed by a crop to ``image_size``.
        crop: str. ``"central"`` (big_vision's ``central_crop``) or
            ``"top_left"`` (keeps the top-left ``image_size`` pixels, as
            big_vision's patch embedding does when the resolution is not a
            multiple of the patch size, e.g. So400m/14 at 384 px).
        value_range: (float, float). Output range of pixel values 0 and 255.
        class_names: None, a list of str, or the name of a list shipped with the
            package (``"imagenet1k"``, ``"imagenet21k"``).
        activation: ``"softmax"``, ``"sigmoid"`` or None: how logits become
            scores (the pre-training loss); None for models without a head.
        name: str.

    A plain serialisable object rather than a `keras.layers.Layer`: it runs
    eagerly on NumPy with ``tf`` ops (as keras-hub's preprocessors inside
    ``tf.data``), holds no weights, and stays out of the model's saved state.

    Example:
    >>> import keras, numpy as np, keras_scalevit
    >>> pre = keras_scalevit.models.ViTImageClassifierPreprocessor(
    ...     image_size=8, resize_size=10)
    >>> pre.pp_string
    'resize(10)|central_crop(8)|value_range(-1.0, 1.0)'
    >>> out = keras.ops.convert_to_numpy(pre(np.full((2, 32, 24, 3), 255, "uint8")))
    >>> out.shape, float(out.min()), float(out.max())
    ((2, 8, 8, 3), 1.0, 1.0)
    """

    def __init__(
        self,
        image_size,
        *,
        resize="resize",
        resize_size=None,
        crop="central",
        value_range=(-1.0, 1.0),
        class_names=None,
        activation="softmax",
        name="vit_image_classifier_preprocessor",
    ):
        self.name = name
        self.image_size = _pair("image_size", image_size)
        self.resize = check_choice("resize", resize, RESIZE_OPS)
        self.crop = check_choice("crop", crop, CROPS)
        if resize_size is None:
            self.resize_size = None
        elif resize == "resize_small":
            self.resize_size = check_positive_int("resize_size", resize_size)
        else:
            self.resize_size = _pair("resize_size", resize_size)
        if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
            raise ValueError(
                f"`value_range` must be a pair (low, high), got {value_range!r}."
            )
        self.value_range = tuple(check_float("value_range", v) for v in value_range)
        if class_names is not None and not isinstance(class_names, str):
            if not isinstance(class_names, (list, tuple)) or not all(
                isinstance(c, str) for c in class_names
            ):
                raise TypeError(
                    "`class_names` must be None, a list of str or the name of a "
                    f"shipped list, got {class_names!r}."
                )
            class_names = list(class_names)
        self.class_names = class_names
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self._pp_fn = None

    @property
    def pp_string(self):
        """The big_vision pp string this preprocessor runs (after ``decode``)."""
        ops = []
        if self.resize_size is None:
            ops.append(f"resize({_size_text(self.image_size)})")
        else:
            size = (
                str(self.resize_size)
                if self.resize == "resize_small"
                else _size_text(self.resize_size)
            )
            ops.append(f"{self.resize}({size})")
            if self.crop == "central":
                ops.append(f"central_crop({_size_text(self.image_size)})")
        lo, hi = self.value_range
        ops.append(f"value_range({lo!r}, {hi!r})")
        return "|".join(ops)

    def with_image_size(self, image_size):
        """A copy for another model resolution (the resize keeps its crop ratio).

        Example:
        >>> from keras_scalevit.models import ViTImageClassifierPreprocessor
        >>> pre = ViTImageClassifierPreprocessor(
        ...     224, resize="resize_small", resize_size=256)
        >>> pre.with_image_size(384).pp_string
        'resize_small(439)|central_crop(384)|value_range(-1.0, 1.0)'
        """
        new = _pair("image_size", image_size)
        config = self.get_config()
        config["image_size"] = new
        if self.resize_size is not None:
            old = self.image_size
            if self.resize == "resize_small":
                config["resize_size"] = int(round(self.resize_size * new[0] / old[0]))
            else:
                config["resize_size"] = tuple(
                    int(round(r * n / o))
                    for r, n, o in zip(self.resize_size, new, old, strict=True)
                )
        return type(self).from_config(config)

    def _preprocess_numpy(self, images):
        import tensorflow as tf

        from keras_scalevit.data import get_preprocess_fn

        if self._pp_fn is None:
            fn = get_preprocess_fn(self.pp_string)
            self._pp_fn = tf.function(
                lambda im: fn({"image": im})["image"], reduce_retracing=True
            )
        if isinstance(images, (list, tuple)):
            items = [np.asarray(im) for im in images]
        else:
            batch = np.asarray(images)
            if batch.ndim == 3:
                batch = batch[None]
            items = list(batch)
        out = []
        for im in items:
            if im.ndim != 3 or im.shape[-1] != 3:
                raise ValueError(
                    "`images` must be (N, H, W, 3) or a list of (H, W, 3) RGB "
                    f"images, got one of shape {im.shape}."
                )
            if im.dtype != np.uint8:
                # big_vision evaluates decoded uint8 images (its resize truncates
                # back to uint8), so float pixels are rounded to uint8 first.
                im = np.clip(np.round(np.asarray(im, np.float64)), 0, 255)
                im = im.astype(np.uint8)
            im = self._pp_fn(tf.convert_to_tensor(im)).numpy()
            # big_vision's VALID patch convolution ignores the bottom and right
            # pixels beyond a whole number of patches ("top_left").
            out.append(im[: self.image_size[0], : self.image_size[1]])
        if not out:
            return np.zeros((0, *self.image_size, 3), np.float32)
        return np.stack(out).astype(np.float32)

    def __call__(self, images):
        # Runs eagerly on NumPy (tf ops, any backend), like keras-hub's
        # preprocessors inside tf.data; the result is a backend tensor.
        if hasattr(images, "numpy") or not isinstance(images, (list, tuple)):
            images = keras.ops.convert_to_numpy(images)
        return keras.ops.convert_to_tensor(self._preprocess_numpy(images))

    def scores(self, logits):
        """Logits to scores with the preset's activation (softmax or sigmoid).

        Example:
        >>> import numpy as np
        >>> from keras_scalevit.models import ViTImageClassifierPreprocessor
        >>> pre = ViTImageClassifierPreprocessor(8, activation="sigmoid")
        >>> pre.scores(np.zeros((1, 2))).tolist()
        [[0.5, 0.5]]
        """
        logits = np.asarray(keras.ops.convert_to_numpy(logits), np.float64)
        if self.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        if self.activation == "softmax":
            z = np.exp(logits - logits.max(axis=-1, keepdims=True))
            return z / z.sum(axis=-1, keepdims=True)
        return logits

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def get_config(self):
        config = dict(name=self.name)
        config.update(
            image_size=list(self.image_size),
            resize=self.resize,
            crop=self.crop,
            resize_size=(
                None
                if self.resize_size is None
                else (
                    self.resize_size
                    if isinstance(self.resize_size, int)
                    else list(self.resize_size)
                )
            ),
            value_range=list(self.value_range),
            class_names=self.class_names,
            activation=self.activation,
        )
        return config
