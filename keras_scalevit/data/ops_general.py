"""General pp ops with big_vision's names and numerics: values, labels, keys."""

import numpy as np
import tensorflow as tf

from keras_scalevit.data.builder import (
    check_key,
    feature_names,
    in_key_out_key,
    register_op,
)
from keras_scalevit.utils.validation import (
    check_bool,
    check_float,
    check_positive_int,
)

# big_vision's default input range, used for integer images.
_UINT8_RANGE = (0.0, 255.0)


def _check_range_arg(name, value):
    """A finite number or a non-empty list of them (one per channel)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(
                f"`{name}` must be a number or a non-empty list of numbers (one "
                f"per channel), got {value!r}."
            )
        return [check_float(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return check_float(name, value)


def _check_in_range(in_min, in_max):
    lo = _check_range_arg("in_min", in_min)
    hi = _check_range_arg("in_max", in_max)
    if isinstance(lo, list) and isinstance(hi, list) and len(lo) != len(hi):
        raise ValueError(
            f"`in_min` and `in_max` must have one value per channel each, got "
            f"{len(lo)} and {len(hi)} values: in_min={in_min!r}, in_max={in_max!r}."
        )
    los = lo if isinstance(lo, list) else [lo]
    his = hi if isinstance(hi, list) else [hi]
    n = max(len(los), len(his))
    for i in range(n):
        a, b = los[i % len(los)], his[i % len(his)]
        if a == b:
            where = f" (channel {i})" if n > 1 else ""
            raise ValueError(
                f"`in_max` must differ from `in_min`: the input range "
                f"[{a:g}, {b:g}]{where} is empty (the mapping would divide by "
                f"zero), got in_min={in_min!r}, in_max={in_max!r}."
            )
    return lo, hi


@register_op("value_range")
@in_key_out_key()
def get_value_range(vmin=-1, vmax=1, in_min=None, in_max=None, clip_values=False):
    """Maps ``[in_min, in_max]`` linearly to ``[vmin, vmax]`` in float32.

    big_vision's formula and default input range ``[0, 255]``. The default
    range is only taken for integer images (uint8 from ``decode``): a float
    image has no known range (it may hold 0..255 or 0..1), so with a float
    image ``in_min`` and ``in_max`` must be given, e.g.
    ``value_range(-1, 1, 0, 1)`` for an image in [0, 1] or
    ``value_range(-1, 1, 0, 255)`` for big_vision's reading of it; otherwise
    the op raises a ``ValueError`` when traced (big_vision would silently
    read a [0, 1] image as 0..255).

    Args:
        vmin: output value for ``in_min``.
        vmax: output value for ``in_max`` (differs from ``vmin``; ``vmax <
            vmin`` inverts).
        in_min: input minimum, a number or one per channel (default 0 for
            integer images).
        in_max: input maximum, a number or one per channel (default 255 for
            integer images); differs from ``in_min`` in every channel.
        clip_values: clip the result to ``[vmin, vmax]``.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("value_range(-1, 1)")
    >>> out = pp({"image": tf.constant([[[0, 255]]], tf.uint8)})
    >>> out["image"].numpy().tolist()
    [[[-1.0, 1.0]]]
    >>> pp = get_preprocess_fn("value_range(-1, 1, 0, 1)")
    >>> pp({"image": tf.constant([[[0.0, 0.5]]])})["image"].numpy().tolist()
    [[[-1.0, 0.0]]]
    """
    vmin = check_float("vmin", vmin)
    vmax = check_float("vmax", vmax)
    if vmin == vmax:
        raise ValueError(
            f"`vmax` must differ from `vmin` (the output range would be one "
            f"value), got vmin={vmin:g}, vmax={vmax:g}."
        )
    explicit = in_min is not None and in_max is not None
    if (in_min is None) != (in_max is None):
        missing = "in_min" if in_min is None else "in_max"
        raise ValueError(
            f"`{missing}` must be given together with "
            f"`{'in_max' if missing == 'in_min' else 'in_min'}` (the input range), "
            f"got in_min={in_min!r}, in_max={in_max!r}."
        )
    if explicit:
        lo, hi = _check_in_range(in_min, in_max)
    else:
        lo, hi = _UINT8_RANGE
    check_bool("clip_values", clip_values)
    channels = max(len(v) if isinstance(v, list) else 1 for v in (lo, hi))

    def _value_range(image):
        image = tf.convert_to_tensor(image)
        if image.dtype == tf.string:
            raise ValueError(
                "pp op `value_range` expects a decoded image, got encoded bytes "
                "(tf.string): put `decode` before it in the pp string."
            )
        if not explicit and not (image.dtype.is_integer or image.dtype.is_bool):
            raise ValueError(
                f"pp op `value_range`: the image is {image.dtype.name}, so its "
                "input range is not known (0..255 or 0..1?). Give it: "
                f"value_range({vmin:g}, {vmax:g}, 0, 1) for an image in [0, 1], "
                f"value_range({vmin:g}, {vmax:g}, 0, 255) for 0..255. The default "
                "[0, 255] is used only for integer (uint8) images."
            )
        last = image.shape[-1] if image.shape.rank else None
        if channels > 1 and last is not None and last != channels:
            raise ValueError(
                f"pp op `value_range`: `in_min`/`in_max` give {channels} values "
                f"(one per channel) but the image has shape {tuple(image.shape)} "
                f"({last} channels)."
            )
        # Same operation order as big_vision, so float32 results are identical.
        lo_t = tf.constant(lo, tf.float32)
        hi_t = tf.constant(hi, tf.float32)
        image = (tf.cast(image, tf.float32) - lo_t) / (hi_t - lo_t)
        image = vmin + image * (vmax - vmin)
        if clip_values:
            image = tf.clip_by_value(image, min(vmin, vmax), max(vmin, vmax))
        return image

    return _value_range


def _labels_in_range(labels, depth, key):
    """Checks that every label is in ``[0, depth)``; see ``get_onehot``."""
    static = tf.get_static_value(labels)
    if static is not None:
        static = np.asarray(static)
        bad = static[(static < 0) | (static >= depth)]
        if bad.size:
            raise ValueError(
                f"pp op `onehot`: feature {key!r} holds label(s) "
                f"{sorted(set(bad.tolist()))[:8]} outside [0, depth) = [0, {depth}); "
                "check `depth` (the number of classes) and `key`."
            )
        return labels
    ok = tf.reduce_all(tf.logical_and(labels >= 0, labels < depth))
    check = tf.debugging.Assert(
        ok,
        [
            # Backticks: TF escapes quotes in assertion messages.
            f"pp op `onehot`: a label of feature `{key}` is outside [0, depth) = "
            f"[0, {depth}); check `depth` (the number of classes) and `key`. "
            "Label(s):",
            labels,
        ],
        summarize=16,
    )
    with tf.control_dependencies([check]):
        return tf.identity(labels)


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
    losses and mixup need floats). Labels must be integers in ``[0, depth)``
    (big_vision gives an all-``off`` row for a label outside): a bad label is a
    ``ValueError`` when the labels are known while tracing (eager calls) and a
    ``tf.errors.InvalidArgumentError`` naming the op, the feature, ``depth``
    and the labels when the example is processed in ``tf.data``.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("onehot(4, key='label', key_result='labels')")
    >>> pp({"label": tf.constant(2)})["labels"].numpy().tolist()
    [0.0, 0.0, 1.0, 0.0]
    """
    depth = check_positive_int("depth", depth)
    check_key("key", key)
    check_key("key_result", key_result, allow_none=True)
    check_bool("multi", multi)
    on = check_float("on", on)
    off = check_float("off", off)
    if on == off:
        raise ValueError(
            f"`on` must differ from `off` (every entry would be {on:g}), got "
            f"on={on:g}, off={off:g}."
        )

    def _onehot(data):
        labels = tf.convert_to_tensor(data[key])
        if not labels.dtype.is_integer:
            raise ValueError(
                f"pp op `onehot` needs integer class ids in feature {key!r}, got "
                f"dtype {labels.dtype.name} (already one-hot? then drop `onehot`)."
            )
        if labels.shape.rank is None:
            raise ValueError(f"`onehot` needs labels of known rank, feature {key!r}.")
        if labels.shape.rank > 1:
            raise ValueError(
                f"pp op `onehot` takes a label (rank 0) or a list of labels "
                f"(rank 1) in feature {key!r}, got shape {tuple(labels.shape)}."
            )
        labels = _labels_in_range(tf.cast(labels, tf.int64), depth, key)
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
    if not keys:
        raise ValueError(f"pp op `{op}` needs at least one feature name, got none.")
    for i, k in enumerate(keys):
        check_key(f"{op}: argument {i}", k)


def _check_present(op, data, keys):
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(
            f"pp op `{op}`: feature(s) {missing} not found; the features are "
            f"{feature_names(data)}."
        )


@register_op("keep")
def get_keep(*keys):
    """Keeps only the named features; each must be present (else a ValueError).

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("keep('image', 'labels')")
    >>> sorted(pp({"image": 0, "labels": 1, "id": 2}))
    ['image', 'labels']
    """
    _check_keys("keep", keys)

    def _keep(data):
        _check_present("keep", data, keys)
        return {k: v for k, v in data.items() if k in keys}

    return _keep


@register_op("drop")
def get_drop(*keys):
    """Drops the named features; each must be present (else a ValueError).

    Example:
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("drop('id')")
    >>> sorted(pp({"image": 0, "id": 2}))
    ['image']
    """
    _check_keys("drop", keys)

    def _drop(data):
        _check_present("drop", data, keys)
        return {k: v for k, v in data.items() if k not in keys}

    return _drop


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
    check_key("inkey", inkey)
    check_key("outkey", outkey)

    def _copy(data):
        _check_present("copy", data, [inkey])
        data[outkey] = tf.nest.map_structure(lambda x: x, data[inkey])
        return data

    return _copy
