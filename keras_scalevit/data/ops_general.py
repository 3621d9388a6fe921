"""General pp ops with big_vision's names and numerics: values, labels, keys."""

import tensorflow as tf

from keras_scalevit.data.builder import (
    check_number,
    check_positive_int,
    in_key_out_key,
    register_op,
)


def _check_range_arg(name, value):
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"`{name}` must not be empty, received {name}={value!r}.")
        for v in value:
            check_number(name, v)
    else:
        check_number(name, value)
    return value


@register_op("value_range")
@in_key_out_key()
def get_value_range(vmin=-1, vmax=1, in_min=0, in_max=255.0, clip_values=False):
    """Maps ``[in_min, in_max]`` linearly to ``[vmin, vmax]`` in float32.

    Args:
        vmin: output value for ``in_min``.
        vmax: output value for ``in_max``.
        in_min: input minimum, a number or one per channel.
        in_max: input maximum, a number or one per channel.
        clip_values: clip the result to ``[vmin, vmax]``.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("value_range(-1, 1)")
    >>> out = pp({"image": tf.constant([[[0, 255]]], tf.uint8)})
    >>> out["image"].numpy().tolist()
    [[[-1.0, 1.0]]]
    """
    check_number("vmin", vmin)
    check_number("vmax", vmax)
    _check_range_arg("in_min", in_min)
    _check_range_arg("in_max", in_max)
    if not isinstance(clip_values, bool):
        raise ValueError(
            f"`clip_values` must be True or False, received clip_values={clip_values!r}."
        )

    def _value_range(image):
        # Same operation order as big_vision, so float32 results are identical.
        lo = tf.constant(in_min, tf.float32)
        hi = tf.constant(in_max, tf.float32)
        image = (tf.cast(image, tf.float32) - lo) / (hi - lo)
        image = vmin + image * (vmax - vmin)
        if clip_values:
            image = tf.clip_by_value(image, vmin, vmax)
        return image

    return _value_range


@register_op("onehot")
def get_onehot(depth, key="labels", key_result=None, multi=True, on=1.0, off=0.0):
    """One-hot (rank-0 label) or multi-hot (rank-1 labels with ``multi``).

    Args:
        depth: number of classes.
        key: feature holding the integer label(s).
        key_result: output feature (default: ``key``).
        multi: merge rank-1 labels into one multi-hot vector (duplicates count
            once); else one one-hot row per label.
        on: value of positive entries.
        off: value of negative entries.

    The result is float32 (big_vision keeps int dtype for int ``on``/``off``;
    losses and mixup need floats).

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("onehot(4, key='label', key_result='labels')")
    >>> pp({"label": tf.constant(2)})["labels"].numpy().tolist()
    [0.0, 0.0, 1.0, 0.0]
    """
    check_positive_int("depth", depth)
    for name, value in (("key", key), ("key_result", key_result)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"`{name}` must be a string, received {name}={value!r}.")
    if not isinstance(multi, bool):
        raise ValueError(f"`multi` must be True or False, received multi={multi!r}.")
    check_number("on", on)
    check_number("off", off)

    def _onehot(data):
        labels = tf.cast(data[key], tf.int64)
        if labels.shape.rank is None:
            raise ValueError(f"`onehot` needs labels of known rank, feature {key!r}.")
        if labels.shape.rank > 0 and multi:
            hits = tf.scatter_nd(
                labels[:, None], tf.ones(tf.shape(labels)[0]), (depth,)
            )
            x = tf.clip_by_value(hits, 0, 1) * (on - off) + off
        else:
            x = tf.one_hot(labels, depth, on_value=float(on), off_value=float(off))
        data[key_result or key] = x
        return data

    return _onehot


def _check_keys(op, keys):
    for k in keys:
        if not isinstance(k, str):
            raise ValueError(f"`{op}` takes feature names (str), received {k!r}.")


@register_op("keep")
def get_keep(*keys):
    """Keeps only the named features.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("keep('image', 'labels')")
    >>> sorted(pp({"image": 0, "labels": 1, "id": 2}))
    ['image', 'labels']
    """
    _check_keys("keep", keys)
    return lambda data: {k: v for k, v in data.items() if k in keys}


@register_op("drop")
def get_drop(*keys):
    """Drops the named features.

    Example:
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("drop('id')")
    >>> sorted(pp({"image": 0, "id": 2}))
    ['image']
    """
    _check_keys("drop", keys)
    return lambda data: {k: v for k, v in data.items() if k not in keys}


@register_op("copy")
def get_copy(inkey, outkey):
    """Copies feature ``inkey`` to ``outkey`` (nested structure copied, tensors shared).

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("copy('image', 'original')")
    >>> sorted(pp({"image": tf.zeros((2, 2, 3))}))
    ['image', 'original']
    """
    _check_keys("copy", (inkey, outkey))

    def _copy(data):
        data[outkey] = tf.nest.map_structure(lambda x: x, data[inkey])
        return data

    return _copy
