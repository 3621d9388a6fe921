"""The paper's losses as big_vision defines them (spec section 5).

``sigmoid_xent`` (big_vision's default, used for JFT pre-training with
``init_head_bias``) and ``softmax_xent``: per example, summed over classes,
computed with ``log_sigmoid`` / ``log_softmax`` so large logits stay finite.
The ``Loss`` classes average over the batch, as big_vision's ``reduction=True``.
"""

import difflib

import keras
from keras import ops

from keras_scalevit.utils.validation import check_shape

_NAMES = ("sigmoid_xent", "softmax_xent")


def _unknown_rank(x):
    # TensorFlow's TensorShape has `rank` None when even the rank is unknown.
    return getattr(getattr(x, "shape", None), "rank", 0) is None


def _check_shapes(y_true, y_pred):
    """``y_true`` must have the logits' shape (static shapes only: graph-safe).

    Both losses take one-hot, multi-hot or soft labels of the logits' shape; a
    broadcastable mismatch (integer ids ``(n,)`` or ``(n, 1)`` against ``(n, C)``
    logits) would silently give a wrong number.
    """
    if _unknown_rank(y_pred) or _unknown_rank(y_true):
        return  # e.g. a TF function retraced with relaxed shapes: nothing static
    pred_shape = tuple(y_pred.shape)
    if len(pred_shape) < 1:
        raise ValueError(
            "`y_pred` must be logits of shape (..., num_classes), got a scalar."
        )
    true_shape = tuple(getattr(y_true, "shape", ()))
    hint = ""
    if len(true_shape) == len(pred_shape) - 1 or (
        true_shape[-1:] == (1,) and pred_shape[-1:] != (1,)
    ):
        hint = "; integer class ids must be one-hot encoded first (pp 'onehot(C)')"
    shown = tuple("?" if d is None else d for d in pred_shape)
    check_shape(
        "y_true",
        true_shape,
        pred_shape,
        what=f"one-hot, multi-hot or soft labels of the logits' shape {shown}{hint}",
    )


def sigmoid_xent(y_true, y_pred):
    """Per-example sigmoid cross-entropy, summed over classes.

    ``-sum_c [y_c log sigmoid(z_c) + (1 - y_c) log sigmoid(-z_c)]``; labels may
    be one-hot, multi-hot or soft.

    Args:
        y_true: labels, shape (..., C): the logits' shape. Another static shape
            raises ``ValueError`` (integer class ids must be one-hot encoded
            first; broadcasting them would give a wrong number).
        y_pred: logits ``z``, shape (..., C).

    Returns:
        Loss per example, shape (...,).

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.losses import sigmoid_xent
    >>> loss = sigmoid_xent(np.array([[0.0, 1.0]]), np.array([[0.0, 0.0]]))
    >>> np.allclose(np.asarray(loss), 2 * np.log(2))
    True
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    _check_shapes(y_true, y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    log_p = ops.log_sigmoid(y_pred)
    log_not_p = ops.log_sigmoid(-y_pred)
    return -ops.sum(y_true * log_p + (1.0 - y_true) * log_not_p, axis=-1)


def softmax_xent(y_true, y_pred):
    """Per-example softmax cross-entropy, ``-sum_c y_c log_softmax(z)_c``.

    Args:
        y_true: labels (one-hot, multi-hot or soft) of the logits' shape
            (..., C); another static shape raises ``ValueError``.
        y_pred: logits ``z``, shape (..., C).

    Returns:
        Loss per example, shape (...,).

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.losses import softmax_xent
    >>> loss = softmax_xent(np.array([[0.0, 1.0]]), np.array([[0.0, 0.0]]))
    >>> np.allclose(np.asarray(loss), np.log(2))
    True
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    _check_shapes(y_true, y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    return -ops.sum(y_true * ops.log_softmax(y_pred, axis=-1), axis=-1)


@keras.saving.register_keras_serializable(package="keras_scalevit")
class SigmoidXent(keras.losses.Loss):
    """big_vision's ``sigmoid_xent``: summed over classes, mean over the batch.

    Args:
        reduction: Keras reduction over examples (default: batch mean).
        name: loss name.
        dtype: dtype of the loss computation (default: float32, so bfloat16
            logits are upcast before the log-sigmoid).

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.losses import SigmoidXent
    >>> loss = SigmoidXent()(np.array([[0.0, 1.0]]), np.array([[0.0, 0.0]]))
    >>> np.allclose(np.asarray(loss), 2 * np.log(2))
    True
    """

    def __init__(
        self, reduction="sum_over_batch_size", name="sigmoid_xent", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return sigmoid_xent(y_true, y_pred)


@keras.saving.register_keras_serializable(package="keras_scalevit")
class SoftmaxXent(keras.losses.Loss):
    """big_vision's ``softmax_xent``: summed over classes, mean over the batch.

    Args:
        reduction: Keras reduction over examples (default: batch mean).
        name: loss name.
        dtype: dtype of the loss computation (default: float32).

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.losses import SoftmaxXent
    >>> loss = SoftmaxXent()(np.array([[0.0, 1.0]]), np.array([[0.0, 0.0]]))
    >>> np.allclose(np.asarray(loss), np.log(2))
    True
    """

    def __init__(
        self, reduction="sum_over_batch_size", name="softmax_xent", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return softmax_xent(y_true, y_pred)


def get(identifier):
    """Returns a loss for a big_vision ``config.loss`` name or a Keras identifier.

    Args:
        identifier: "sigmoid_xent", "softmax_xent", a ``keras.losses.Loss``,
            or anything ``keras.losses.get`` accepts.

    Returns:
        A ``keras.losses.Loss`` instance or callable.

    Example:
    >>> from keras_scalevit import losses
    >>> type(losses.get("sigmoid_xent")).__name__
    'SigmoidXent'
    """
    if identifier == "sigmoid_xent":
        return SigmoidXent()
    if identifier == "softmax_xent":
        return SoftmaxXent()
    try:
        return keras.losses.get(identifier)
    except ValueError:
        hint = ""
        if isinstance(identifier, str):
            close = difflib.get_close_matches(identifier, _NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            "`loss` must be 'sigmoid_xent', 'softmax_xent', a keras.losses.Loss or "
            f"a name keras.losses.get knows, got {identifier!r}{hint}."
        ) from None
