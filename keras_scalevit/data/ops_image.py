"""Image pp ops with big_vision's names, arguments and numerics (TF).

Geometry and resizing use ``tf.image`` exactly as big_vision does, so outputs
match big_vision pixel for pixel (``misc/pp_ops.npz``). The random ops use the
stateless ``tf.image`` variants with the per-op seed from the builder.
"""

import tensorflow as tf

from keras_scalevit.data.builder import (
    check_number,
    check_positive_int,
    check_size,
    in_key_out_key,
    register_op,
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
    if method not in RESIZE_METHODS:
        raise ValueError(
            f"`method` must be one of {RESIZE_METHODS}, received method={method!r}."
        )
    return method


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, received {name}={value!r}.")
    return value


def _check_area_range(area_min, area_max):
    check_number("area_min", area_min)
    check_number("area_max", area_max)
    if not 0 < area_min <= area_max <= 100:
        raise ValueError(
            "`area_min` and `area_max` are percentages with 0 < area_min <= "
            f"area_max <= 100, received area_min={area_min!r}, area_max={area_max!r}."
        )


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
        channels: number of output channels (``tf.io.decode_image``).
        precise: use the integer-accurate JPEG IDCT (matches PIL/cv2).

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> png = tf.io.encode_png(tf.zeros((4, 6, 3), tf.uint8))
    >>> out = get_preprocess_fn("decode")({"image": png})
    >>> out["image"].shape.as_list(), out["image"].dtype.name
    ([4, 6, 3], 'uint8')
    """
    check_positive_int("channels", channels)
    _check_bool("precise", precise)

    def _decode(image):
        if image.dtype != tf.string:
            raise ValueError(
                "`decode` expects encoded image bytes (tf.string), received a "
                f"{image.dtype.name} tensor: the image is already decoded (drop "
                "`decode` from the pp string)."
            )
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
    _check_bool("antialias", antialias)
    return lambda image: resize_image(image, size, method, antialias)


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
    _check_bool("antialias", antialias)

    def _resize_small(image):
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
    _check_bool("antialias", antialias)

    def _resize_long(image):
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
    _check_bool("antialias", antialias)

    def _inception_crop(image, seed):
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
    check_number("ratio_min", ratio_min)
    check_number("ratio_max", ratio_max)
    if not 0 < ratio_min <= ratio_max:
        raise ValueError(
            "`ratio_min` and `ratio_max` must satisfy 0 < ratio_min <= ratio_max, "
            f"received ratio_min={ratio_min!r}, ratio_max={ratio_max!r}."
        )
    _check_method(method)
    _check_bool("antialias", antialias)

    def _decode_and_crop(image_bytes, seed):
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
    return lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed)
