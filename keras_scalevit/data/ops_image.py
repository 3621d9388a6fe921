"""Image pp ops with big_vision's names, arguments and numerics (TF).

Geometry and resizing use ``tf.image`` exactly as big_vision does, so outputs
match big_vision pixel for pixel (``misc/pp_ops.npz``). The random ops use the
stateless ``tf.image`` variants with the per-op seed from the builder.
"""

import tensorflow as tf

from keras_scalevit.data.builder import check_size, in_key_out_key, register_op
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_positive_float,
    check_positive_int,
)

RESIZE_METHODS = (
    "bilinear",
    "nearest",
    "bicubic",
    "area",
    "lanczos3",
    "lanczos5",
    "gaussian",
    "mitchellcubic",
)


def _check_method(method):
    return check_choice("method", method, RESIZE_METHODS)


def _check_area_range(area_min, area_max):
    area_min = check_float(
        "area_min", area_min, minimum=0, maximum=100, min_inclusive=False
    )
    area_max = check_float(
        "area_max", area_max, minimum=0, maximum=100, min_inclusive=False
    )
    if area_min > area_max:
        raise ValueError(
            f"`area_min` must be <= `area_max` (both in percent of the image), "
            f"got area_min={area_min:g} > area_max={area_max:g}."
        )


def _check_ratio_range(ratio_min, ratio_max):
    check_positive_float("ratio_min", ratio_min)
    check_positive_float("ratio_max", ratio_max)
    if ratio_min > ratio_max:
        raise ValueError(
            f"`ratio_min` must be <= `ratio_max` (aspect ratios width/height), "
            f"got ratio_min={ratio_min!r} > ratio_max={ratio_max!r}."
        )


def check_image(op, image, *, encoded=False):
    """Trace-time check of a pp op's input; returns it as a tensor.

    An image op needs one decoded image of shape (height, width, channels);
    ``encoded=True`` ops need the encoded bytes (a ``tf.string`` scalar).

    Args:
        op: str, the op name for the message.
        image: the op's input.
        encoded: whether the op decodes.

    Returns:
        The input as a tensor.

    Raises:
        ValueError: naming the op, the received dtype/shape and the fix.

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.data.ops_image import check_image
    >>> check_image("resize", np.zeros((4, 4, 3), np.uint8)).shape.as_list()
    [4, 4, 3]
    >>> check_image("resize", np.zeros((4, 4), np.uint8))
    Traceback (most recent call last):
    ...
    ValueError: pp op `resize` expects one image of shape (height, width, channels), got shape (4, 4).
    """
    image = tf.convert_to_tensor(image)
    if encoded:
        if image.dtype != tf.string:
            raise ValueError(
                f"pp op `{op}` expects encoded image bytes (tf.string), got a "
                f"{image.dtype.name} tensor of shape {tuple(image.shape)}: the "
                "image is already decoded (drop the decoding op from the pp "
                "string, or use `inception_crop` instead of "
                "`decode_jpeg_and_inception_crop`)."
            )
        return image
    if image.dtype == tf.string:
        raise ValueError(
            f"pp op `{op}` expects a decoded image, got encoded bytes (tf.string): "
            "put `decode` before it in the pp string."
        )
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(
            f"pp op `{op}` expects one image of shape (height, width, channels), "
            f"got shape {tuple(image.shape)}."
        )
    return image


def check_crop_fits(op, image, height, width):
    """Checks that a ``height`` x ``width`` crop fits inside ``image``.

    With a static image size (eager, or a fixed-size image in ``tf.data``) a
    too-large crop is a ``ValueError`` when the op is traced; otherwise a
    ``tf.debugging.Assert`` raises ``tf.errors.InvalidArgumentError`` naming
    the op, the crop size and the image shape when the example is processed.

    Args:
        op: str, the op name for the message.
        image: (H, W, C) tensor.
        height: int, the crop height.
        width: int, the crop width.

    Returns:
        ``image`` (with the run-time check attached when one is needed).

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data.ops_image import check_crop_fits
    >>> check_crop_fits("central_crop", tf.zeros((4, 6, 3)), 8, 8)
    Traceback (most recent call last):
    ...
    ValueError: pp op `central_crop`: the crop (height, width) = (8, 8) is larger than the image of shape (4, 6, 3); resize the image first (e.g. `resize_small(8)`) or crop less.
    """
    static = image.shape.as_list()[:2] if image.shape.rank is not None else []
    static = static + [None] * (2 - len(static))
    too_big = any(
        s is not None and c > s for s, c in zip(static, (height, width), strict=True)
    )
    if too_big:
        raise ValueError(
            f"pp op `{op}`: the crop (height, width) = ({height}, {width}) is "
            f"larger than the image of shape {tuple(image.shape)}; resize the "
            f"image first (e.g. `resize_small({max(height, width)})`) or crop less."
        )
    if None not in static:
        return image
    shape = tf.shape(image)
    fits = tf.logical_and(shape[0] >= height, shape[1] >= width)
    check = tf.debugging.Assert(
        fits,
        [
            f"pp op `{op}`: the crop (height, width) = ({height}, {width}) is "
            "larger than the image; resize the image first or crop less. Image "
            "shape (height, width, channels):",
            shape,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(image)


def resize_image(image, size, method="bilinear", antialias=False):
    """``tf.image.resize`` then clip and cast back to the input dtype.

    The cast truncates (uint8 127.9 -> 127), as big_vision's ``resize``.

    Args:
        image: (H, W, C) tensor.
        size: (height, width), ints or int tensors.
        method: a ``tf.image.resize`` method name.
        antialias: bool, see ``tf.image.resize``.

    Returns:
        The resized image, same dtype as ``image``.

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.data.ops_image import resize_image
    >>> resize_image(np.zeros((8, 8, 3), np.uint8), (4, 4)).dtype.name
    'uint8'
    """
    image = tf.convert_to_tensor(image)
    dtype = image.dtype
    out = tf.image.resize(image, size, method=method, antialias=antialias)
    return tf.cast(tf.clip_by_value(out, dtype.min, dtype.max), dtype)


def _resize_by_factor(image, factor, method, antialias):
    # float32 arithmetic and round-half-to-even as big_vision (pixel parity).
    shape = tf.shape(image)
    h = tf.cast(tf.round(tf.cast(shape[0], tf.float32) * factor), tf.int32)
    w = tf.cast(tf.round(tf.cast(shape[1], tf.float32) * factor), tf.int32)
    return resize_image(image, (h, w), method, antialias)


@register_op("decode")
@in_key_out_key()
def get_decode(channels=3, precise=False):
    """Decodes encoded image bytes (JPEG, PNG, GIF, BMP) to uint8.

    Args:
        channels: number of output channels, 1, 3 or 4 (0: as stored in
            the file), as ``tf.io.decode_image``.
        precise: use the integer-accurate JPEG IDCT (matches PIL/cv2).

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> png = tf.io.encode_png(tf.zeros((4, 6, 3), tf.uint8))
    >>> out = get_preprocess_fn("decode")({"image": png})
    >>> out["image"].shape.as_list(), out["image"].dtype.name
    ([4, 6, 3], 'uint8')
    """
    check_int("channels", channels, minimum=0)
    check_choice("channels", channels, (0, 1, 3, 4))
    check_bool("precise", precise)
    if precise and channels == 4:
        raise ValueError(
            "`channels` must be 0, 1 or 3 with precise=True (JPEG has no alpha "
            "channel), got 4."
        )

    def _decode(image):
        image = check_image("decode", image, encoded=True)
        if precise:
            return tf.image.decode_jpeg(
                image, channels=channels, dct_method="INTEGER_ACCURATE"
            )
        return tf.io.decode_image(image, channels=channels, expand_animations=False)

    return _decode


@register_op("resize")
@in_key_out_key()
def get_resize(size, method="bilinear", antialias=False):
    """Resizes to ``size`` (int or (h, w)); clips and casts back to the dtype.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> data = {"image": tf.zeros((8, 8, 3), tf.uint8)}
    >>> get_preprocess_fn("resize(4)")(data)["image"].shape.as_list()
    [4, 4, 3]
    """
    size = check_size("size", size)
    _check_method(method)
    check_bool("antialias", antialias)
    return lambda image: resize_image(
        check_image("resize", image), size, method, antialias
    )


@register_op("resize_small")
@in_key_out_key()
def get_resize_small(smaller_size, method="area", antialias=False):
    """Resizes so the smaller side is ``smaller_size``, keeping the aspect.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> data = {"image": tf.zeros((8, 16, 3), tf.uint8)}
    >>> get_preprocess_fn("resize_small(4)")(data)["image"].shape.as_list()
    [4, 8, 3]
    """
    check_positive_int("smaller_size", smaller_size)
    _check_method(method)
    check_bool("antialias", antialias)

    def _resize_small(image):
        image = check_image("resize_small", image)
        shape = tf.shape(image)
        factor = tf.cast(smaller_size, tf.float32) / tf.cast(
            tf.minimum(shape[0], shape[1]), tf.float32
        )
        return _resize_by_factor(image, factor, method, antialias)

    return _resize_small


@register_op("resize_long")
@in_key_out_key()
def get_resize_long(longer_size, method="area", antialias=True):
    """Resizes so the longer side is ``longer_size``, keeping the aspect.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> data = {"image": tf.zeros((8, 16, 3), tf.uint8)}
    >>> get_preprocess_fn("resize_long(4)")(data)["image"].shape.as_list()
    [2, 4, 3]
    """
    check_positive_int("longer_size", longer_size)
    _check_method(method)
    check_bool("antialias", antialias)

    def _resize_long(image):
        image = check_image("resize_long", image)
        shape = tf.shape(image)
        factor = tf.cast(longer_size, tf.float32) / tf.cast(
            tf.maximum(shape[0], shape[1]), tf.float32
        )
        return _resize_by_factor(image, factor, method, antialias)

    return _resize_long


def sample_inception_box(
    image_shape, seed, area_min=5, area_max=100, ratio_min=0.75, ratio_max=1.33
):
    """Samples an Inception-style crop box (stateless).

    Area uniform in ``[area_min, area_max]`` percent of the image, aspect
    ratio (w/h) in ``[ratio_min, ratio_max]``, up to 100 attempts, else the
    whole image (``tf.image.stateless_sample_distorted_bounding_box`` with no
    object boxes, as big_vision).

    Args:
        image_shape: int tensor (H, W, C).
        seed: stateless seed, int tensor of shape [2].
        area_min: minimal crop area in percent.
        area_max: maximal crop area in percent.
        ratio_min: minimal aspect ratio w/h.
        ratio_max: maximal aspect ratio w/h.

    Returns:
        ``(begin, size)`` int32 tensors for ``tf.slice``: (y, x, 0), (h, w, -1).

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data.ops_image import sample_inception_box
    >>> begin, size = sample_inception_box(tf.constant([32, 32, 3]), tf.constant([0, 1]))
    >>> image = tf.slice(tf.zeros((32, 32, 3)), begin, size)
    >>> bool(image.shape[0] <= 32 and image.shape[1] <= 32)
    True
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(ratio_min, ratio_max),
        area_range=(area_min / 100, area_max / 100),
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


@register_op("inception_crop")
@in_key_out_key(random=True)
def get_inception_crop(
    size=None, area_min=5, area_max=100, method="bilinear", antialias=False
):
    """Inception-style random crop, resized to ``size`` when given.

    Area in ``[area_min, area_max]`` percent, aspect ratio in [3/4, 1.33]
    (TF's default, as big_vision).

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> data = {"image": tf.zeros((32, 32, 3), tf.uint8)}
    >>> get_preprocess_fn("inception_crop(16)")(data)["image"].shape.as_list()
    [16, 16, 3]
    """
    size = check_size("size", size, allow_none=True)
    _check_area_range(area_min, area_max)
    _check_method(method)
    check_bool("antialias", antialias)

    def _inception_crop(image, seed):
        image = check_image("inception_crop", image)
        begin, box = sample_inception_box(tf.shape(image), seed, area_min, area_max)
        crop = tf.slice(image, begin, box)
        crop.set_shape([None, None, image.shape[-1]])
        if size:
            crop = resize_image(crop, size, method, antialias)
        return crop

    return _inception_crop


@register_op("decode_jpeg_and_inception_crop")
@in_key_out_key(random=True)
def get_decode_jpeg_and_inception_crop(
    size=None,
    area_min=5,
    area_max=100,
    ratio_min=0.75,
    ratio_max=1.33,
    method="bilinear",
    antialias=False,
):
    """Inception crop sampled from the JPEG header; decodes only the window.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> jpeg = tf.io.encode_jpeg(tf.zeros((32, 32, 3), tf.uint8))
    >>> pp = get_preprocess_fn("decode_jpeg_and_inception_crop(16)")
    >>> pp({"image": jpeg})["image"].shape.as_list()
    [16, 16, 3]
    """
    size = check_size("size", size, allow_none=True)
    _check_area_range(area_min, area_max)
    _check_ratio_range(ratio_min, ratio_max)
    _check_method(method)
    check_bool("antialias", antialias)

    def _decode_and_crop(image_bytes, seed):
        image_bytes = check_image(
            "decode_jpeg_and_inception_crop", image_bytes, encoded=True
        )
        shape = tf.image.extract_jpeg_shape(image_bytes)
        begin, box = sample_inception_box(
            shape, seed, area_min, area_max, ratio_min, ratio_max
        )
        window = tf.stack([begin[0], begin[1], box[0], box[1]])
        image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
        if size:
            image = resize_image(image, size, method, antialias)
        return image

    return _decode_and_crop


@register_op("random_crop")
@in_key_out_key(random=True)
def get_random_crop(crop_size):
    """Random crop of ``crop_size`` (int or (h, w)), uniform position.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> data = {"image": tf.zeros((8, 8, 3), tf.uint8)}
    >>> get_preprocess_fn("random_crop(4)")(data)["image"].shape.as_list()
    [4, 4, 3]
    """
    crop_size = check_size("crop_size", crop_size)

    def _random_crop(image, seed):
        image = check_image("random_crop", image)
        image = check_crop_fits("random_crop", image, *crop_size)
        channels = (
            image.shape[-1] if image.shape[-1] is not None else tf.shape(image)[-1]
        )
        return tf.image.stateless_random_crop(image, (*crop_size, channels), seed=seed)

    return _random_crop


@register_op("central_crop")
@in_key_out_key()
def get_central_crop(crop_size=None):
    """Central crop at offset ((H-h)//2, (W-w)//2); None: largest square.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> data = {"image": tf.zeros((8, 8, 3), tf.uint8)}
    >>> get_preprocess_fn("central_crop(6)")(data)["image"].shape.as_list()
    [6, 6, 3]
    """
    crop_size = check_size("crop_size", crop_size, allow_none=True)

    def _central_crop(image):
        image = check_image("central_crop", image)
        if crop_size:
            image = check_crop_fits("central_crop", image, *crop_size)
        shape = tf.shape(image)
        if crop_size:
            h, w = crop_size
        else:
            h = w = tf.minimum(shape[0], shape[1])
        dy = (shape[0] - h) // 2
        dx = (shape[1] - w) // 2
        return tf.image.crop_to_bounding_box(image, dy, dx, h, w)

    return _central_crop


@register_op("flip_lr")
@in_key_out_key(random=True)
def get_flip_lr():
    """Left-right flip with probability 1/2.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> data = {"image": tf.reshape(tf.range(3), (1, 3, 1))}
    >>> out = get_preprocess_fn("flip_lr")(data)["image"]
    >>> out.numpy().ravel().tolist() in ([0, 1, 2], [2, 1, 0])
    True
    """
    return lambda image, seed: tf.image.stateless_random_flip_left_right(
        check_image("flip_lr", image), seed
    )
