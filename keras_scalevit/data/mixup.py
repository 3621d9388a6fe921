"""Batch-level mixup as big_vision's train step (spec section 5), for tf.data.

One ``a ~ Beta(p, p)`` per batch, ``a = max(a, 1 - a)``, and every mixed
feature ``x`` becomes ``a * x + (1 - a) * roll(x, 1, axis=0)``. The draw is
stateless: the batch's seed fixes ``a``.
"""

import tensorflow as tf

from keras_scalevit.utils.validation import check_positive_float


def sample_mixup_weight(p, seed):
    """Draws big_vision's mixup weight ``max(a, 1 - a)``, ``a ~ Beta(p, p)``.

    Beta is sampled as ``g1 / (g1 + g2)`` with ``g1, g2 ~ Gamma(p)``.

    Args:
        p: float > 0, the Beta concentration (``config.mixup.p``).
        seed: stateless seed, int tensor of shape [2].

    Returns:
        float32 scalar tensor in [0.5, 1].

    Example:
    >>> from keras_scalevit.data.mixup import sample_mixup_weight
    >>> a = float(sample_mixup_weight(0.2, [0, 1]))
    >>> 0.5 <= a <= 1.0
    True
    """
    p = check_positive_float("p", p)
    g = tf.random.stateless_gamma([2], seed=seed, alpha=p, dtype=tf.float32)
    total = g[0] + g[1]
    # Both gammas can underflow to 0 for tiny p; Beta(p, p) then sits at 0 or 1.
    a = tf.where(total > 0, g[0] / tf.maximum(total, 1e-30), 1.0)
    return tf.maximum(a, 1.0 - a)


def mixup(batch, p, seed, keys=("image", "labels")):
    """Mixes a batch with itself rolled by one, as big_vision's ``mixup``.

    Args:
        batch: dict of batched float tensors (leading axis = examples).
        p: float > 0, the Beta concentration.
        seed: stateless seed for this batch, int tensor of shape [2].
        keys: the features to mix (images and their labels).

    Returns:
        A new dict with ``keys`` mixed and the other features unchanged.

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.data import mixup
    >>> batch = {"image": np.eye(3, dtype="float32"), "labels": np.eye(3, dtype="float32")}
    >>> out = mixup(batch, p=1.0, seed=[1, 2])
    >>> np.allclose(out["labels"].numpy().sum(1), 1.0)
    True
    """
    p = check_positive_float("p", p)
    if not isinstance(batch, dict):
        raise TypeError(
            f"`batch` must be a dict of batched features, got {type(batch).__name__}."
        )
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"`keys` must be a tuple of feature names (str), got {keys!r}.")
    a = sample_mixup_weight(p, seed)
    out = dict(batch)
    for key in keys:
        if key not in batch:
            raise ValueError(
                f"mixup: feature {key!r} not in the batch; features: {sorted(batch)}."
            )
        x = tf.convert_to_tensor(batch[key])
        if not x.dtype.is_floating:
            raise ValueError(
                f"mixup needs float features, received {key!r} of dtype "
                f"{x.dtype.name} (apply value_range/onehot in the pp string first)."
            )
        w = tf.cast(a, x.dtype)
        out[key] = w * x + (1 - w) * tf.roll(x, shift=1, axis=0)
    return out
