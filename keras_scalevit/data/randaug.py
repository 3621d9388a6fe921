"""The ``randaug`` pp op: RandAugment from keras-cv or Keras, made stateless.

The transforms come from ``keras_cv.layers.RandAugment`` when keras-cv (the
``cv`` extra) is importable -- about 10x faster per image in ``tf.data`` on
CPU -- and from ``keras.layers.RandAugment`` otherwise. Both draw randomness
from stateful generators, which in a parallel ``tf.data.map`` gives a different
stream on every run. This is the one place that reaches into their internals:
every random draw of the layer is redirected to stateless TF ops seeded from
the example's seed (distinct per draw, numbered in trace order), so the op is
reproducible across runs and under any parallelism.

Semantics versus big_vision's archived ``randaug`` (TF EfficientNet policy):
``num_layers`` ops are applied in sequence, each always (no identity, no skip
probability); ``magnitude`` is on big_vision's 0..10 level scale and maps to a
strength ``magnitude / 10`` in [0, 1]. The op set and the magnitude-to-strength
curves are those of the chosen library, not of the EfficientNet code.
"""

import keras
import tensorflow as tf

from keras_scalevit.data.builder import in_key_out_key, register_op
from keras_scalevit.data.ops_image import check_image
from keras_scalevit.utils.validation import check_choice, check_float, check_int

RANDAUG_IMPLS = ("keras_cv", "keras")
_MAX_LEVEL = 10


def keras_cv_available():
    """Whether ``keras_cv`` (the optional ``cv`` extra) can be imported.

    Returns:
        bool.

    Example:
    >>> from keras_scalevit.data.randaug import keras_cv_available
    >>> isinstance(keras_cv_available(), bool)
    True
    """
    try:
        import keras_cv  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


class _SeedStream:
    """Hands out distinct stateless seeds derived from one example seed."""

    def __init__(self):
        self.seed = None
        self.count = 0

    def reset(self, seed):
        self.seed = seed
        self.count = 0

    def next(self):
        if self.seed is None:
            raise RuntimeError("randaug drew a random number outside its op call.")
        seed = tf.random.experimental.stateless_fold_in(self.seed, self.count)
        self.count += 1
        return seed


class _KerasSeedSource(keras.random.SeedGenerator):
    """A ``SeedGenerator`` whose ``next()`` reads the stateless stream.

    Deliberately skips ``SeedGenerator.__init__``: no state variable is needed.
    """

    def __init__(self, stream):  # noqa: D107 - no super().__init__ on purpose
        self._stream = stream
        self.name = "scalevit_stateless_seed"

    def next(self, ordered=True):
        return self._stream.next()


class _TFGeneratorShim:
    """Duck-types the ``tf.random.Generator`` methods keras-cv layers call."""

    def __init__(self, stream):
        self._stream = stream

    def uniform(self, shape, minval=0, maxval=None, dtype=tf.float32, name=None):
        dtype = tf.as_dtype(dtype)
        if maxval is None:
            maxval = 1 if dtype.is_floating else None
        return tf.random.stateless_uniform(
            shape, self._stream.next(), minval=minval, maxval=maxval, dtype=dtype
        )

    def normal(self, shape, mean=0.0, stddev=1.0, dtype=tf.float32, name=None):
        return tf.random.stateless_normal(
            shape, self._stream.next(), mean=mean, stddev=stddev, dtype=dtype
        )


class _UniformShim:
    def __init__(self, stream, lower, upper):
        self._stream, self.lower, self.upper = stream, lower, upper

    def __call__(self, shape=(), dtype="float32"):
        return tf.random.stateless_uniform(
            shape, self._stream.next(), self.lower, self.upper, dtype=dtype
        )


class _NormalShim:
    def __init__(self, stream, mean, stddev, min_value, max_value):
        self._stream = stream
        self.mean, self.stddev = mean, stddev
        self.min_value, self.max_value = min_value, max_value

    def __call__(self, shape=(), dtype="float32"):
        x = tf.random.stateless_normal(
            shape, self._stream.next(), self.mean, self.stddev, dtype=dtype
        )
        return tf.clip_by_value(x, self.min_value, self.max_value)


def _keras_layer(num_layers, strength, stream):
    layer = keras.layers.RandAugment(
        value_range=(0, 255), num_ops=num_layers, factor=strength, seed=0
    )
    source = _KerasSeedSource(stream)
    for sub in [layer] + [getattr(layer, n) for n in layer._AUGMENT_LAYERS]:
        # object.__setattr__: Keras would otherwise track the source as a
        # SeedGenerator with a state variable.
        if hasattr(sub, "generator"):
            object.__setattr__(sub, "generator", source)
        object.__setattr__(sub, "_backend_generators", {"tensorflow": source})
    return layer


def _keras_cv_layer(num_layers, strength, stream):
    import keras_cv

    layer = keras_cv.layers.RandAugment(
        value_range=(0, 255),
        augmentations_per_image=num_layers,
        magnitude=strength,
        magnitude_stddev=0.0,  # big_vision uses a fixed magnitude
        rate=1.0,  # big_vision applies every chosen op
        seed=0,
    )
    subs = [layer, layer._random_choice, *layer._random_choice.layers]
    for sub in subs:
        if hasattr(sub, "_random_generator"):
            object.__setattr__(sub, "_random_generator", _TFGeneratorShim(stream))
        for name, value in list(vars(sub).items()):
            if isinstance(value, keras_cv.core.UniformFactorSampler):
                shim = _UniformShim(stream, value.lower, value.upper)
            elif isinstance(value, keras_cv.core.NormalFactorSampler):
                shim = _NormalShim(
                    stream, value.mean, value.stddev, value.min_value, value.max_value
                )
            else:
                continue
            object.__setattr__(sub, name, shim)
    return layer


@register_op("randaug")
@in_key_out_key(random=True)
def get_randaug(num_layers=2, magnitude=10, impl=None):
    """RandAugment on images with values in [0, 255] (before ``value_range``).

    Args:
        num_layers: ops applied in sequence (N in the paper).
        magnitude: strength level 0..10 (M, big_vision's scale).
        impl: "keras_cv", "keras" or None (keras-cv when importable).

    The output has the input's dtype (rounded and clipped for integers).

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("randaug(2, 5, impl='keras')")
    >>> data = {"image": tf.zeros((16, 16, 3), tf.uint8)}

    Running it traces the Keras layers once (seconds on the JAX backend, so
    skipped in the doctests):
    >>> out = pp(data)["image"]  # doctest: +SKIP
    >>> out.shape.as_list(), out.dtype.name  # doctest: +SKIP
    ([16, 16, 3], 'uint8')
    """
    check_int("num_layers", num_layers, minimum=1)
    # big_vision's level scale is 0..10.
    magnitude = check_float("magnitude", magnitude, minimum=0, maximum=_MAX_LEVEL)
    check_choice("impl", impl, (*RANDAUG_IMPLS, None))
    if impl is None:
        impl = "keras_cv" if keras_cv_available() else "keras"
    if impl == "keras_cv" and not keras_cv_available():
        raise ValueError(
            "randaug(impl='keras_cv') needs keras-cv: pip install 'keras-scalevit[cv]'."
        )
    # Keras' layers reject a zero strength; a tiny one is the identity in effect.
    strength = max(magnitude / _MAX_LEVEL, 1e-3)
    stream = _SeedStream()
    make = _keras_cv_layer if impl == "keras_cv" else _keras_layer
    layer = make(num_layers, strength, stream)

    def _randaug_graph(image, seed):
        dtype = image.dtype
        stream.reset(seed)
        try:
            out = layer(tf.cast(image, tf.float32), training=True)
        finally:
            stream.reset(None)
        out = tf.convert_to_tensor(out)
        if dtype.is_integer:
            out = tf.round(tf.clip_by_value(out, dtype.min, dtype.max))
        return tf.cast(out, dtype)

    # A tf.function: keras-cv needs autograph, and the layers take their TF
    # code path only inside a TF graph (also when a pp string is run eagerly).
    _randaug_fn = tf.function(_randaug_graph)

    def _randaug(image, seed):
        return _randaug_fn(check_image("randaug", image), seed)

    return _randaug
