"""Layers of the refined ViT, numerically as big_vision's `models/vit.py`.

Layer and weight names mirror big_vision's checkpoint names (``LayerNorm_0/scale``,
``MultiHeadDotProductAttention_0/query/kernel``, ``MlpBlock_0/Dense_0/kernel``, ...), so
``variable.path`` reads like a big_vision parameter name and its regex patterns
(``wd_mults``, ``lr_mults``, schedules) carry over unchanged.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_scalevit.models.vit.posemb import posemb_sincos2d
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_positive_float,
    check_positive_int,
    check_probability,
    check_shape,
)

POSEMB_TYPES = ("learn", "sincos2d")


def _head_policy(dtype_policy):
    """The float32 policy used after the encoder under mixed precision.

    big_vision computes LayerNorms, the MAP head, pre-logits and the head in float32
    even when the encoder matmuls run in bfloat16 (spec §1.3).
    """
    policy = keras.dtype_policies.get(dtype_policy)
    return keras.DTypePolicy(policy.variable_dtype)


def _flat_glorot_uniform(fan_in, fan_out):
    # Flax initialises attention kernels (D, H, d) as Xavier-uniform of the
    # flattened 2-D matrix; Keras' glorot_uniform would use other fans for 3-D.
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit)


# Fast paths on the two backends that run op by op (eager torch, TensorFlow's graph
# executor on a CPU): each projection runs as one 2-D matmul + bias (torch's `linear`;
# TensorFlow's `MatMul` + `BiasAdd`, which its oneDNN remapper fuses with the MLP's GELU
# into one kernel), and on torch attention as `scaled_dot_product_attention` on strided
# views (`_torch_attention`). Paired in one process against Keras' own layers and
# `ops.dot_product_attention`: torch ViT-S/16 train step ~4% and B/16 inference ~6%
# faster; TensorFlow B/16 b32 inference ~13% and the S/16 train step ~3% faster
# (Keras' `Dense` reshapes the matmul back to 3-D before its bias, which hides the
# pattern, and `EinsumDense` runs as a broadcast `BatchMatMulV2`). A TensorFlow
# training step runs the GELU compiled (`_tf_gelu`): the S/16 train step 2-4% faster.
# On JAX attention runs heads-first between 2-D projection matmuls
# (`MultiHeadDotProductAttention._heads_first`). Tests turn this off to compare.
_FAST_PATHS = True


def _linear(x, layers, in_axes=1, gelu=False, training=None):
    """``x @ kernel + bias`` of Keras (Einsum)Dense ``layers`` as 2-D matmuls.

    Each layer's kernel is read as a matrix over its first ``in_axes`` axes (the
    last ``in_axes`` axes of ``x``). On torch, layers that share the input (query,
    key and value) run as one matmul over their concatenated kernels. ``gelu``
    applies the tanh-approximated GELU to the (single) output (on TensorFlow with
    ``training`` true as `_tf_gelu`, compiled). Returns one output per layer,
    shaped ``x.shape[:-in_axes] + kernel.shape[in_axes:]``, or `None` when the
    layers must run as themselves (JAX, quantized layers, or the fast paths
    switched off). The same math as the layers' ``matmul`` + ``add``; results
    differ by float32 round-off only (where the bias enters the sum).
    """
    backend = keras.backend.backend()
    if not _FAST_PATHS or backend not in ("torch", "tensorflow"):
        return None
    if _any_quantized(layers):
        return None
    if backend == "torch":
        return _torch_linear(x, layers, in_axes, gelu)
    return [_tf_linear(x, layer, in_axes, gelu, training) for layer in layers]


def _any_quantized(layers):
    """Whether a layer is quantized: it then runs as itself, never on a fast path."""
    return any(layer.quantization_mode is not None for layer in layers)


def _torch_linear(x, layers, in_axes, gelu):
    import torch

    # torch's own calls throughout: each `keras.ops` call first checks its arguments
    # for symbolic tensors (`ops.reshape` ~19 µs against ~0.8 µs for torch's).
    dtype = getattr(torch, layers[0].compute_dtype)
    x = torch.as_tensor(x).to(dtype)
    lead = tuple(x.shape[:-in_axes])
    kernels, biases, out_shapes = [], [], []
    for layer in layers:
        kernel = layer.kernel  # a variable, or a tensor with the LoRA update
        if isinstance(kernel, keras.Variable):
            kernel = kernel.value
        kernel = kernel.to(dtype)
        out_shapes.append(tuple(kernel.shape[in_axes:]))
        kernels.append(kernel.reshape(math.prod(kernel.shape[:in_axes]), -1))
        if layer.bias is None:
            biases.append(kernel.new_zeros(kernels[-1].shape[1]))
        else:
            biases.append(layer.bias.value.to(dtype).reshape(-1))
    kernel = kernels[0] if len(layers) == 1 else torch.cat(kernels, dim=1)
    bias = biases[0] if len(layers) == 1 else torch.cat(biases)
    y = torch.nn.functional.linear(x.reshape(*lead, -1), kernel.T, bias)
    if gelu and y.requires_grad:
        y = torch.nn.functional.gelu(y, approximate="tanh")  # Keras' torch gelu
    elif gelu:  # inference: in place, without a second buffer of the MLP's width
        torch.ops.aten.gelu_(y, approximate="tanh")
    # (One layer: no split, whose backward would copy the gradient through a cat.)
    parts = (
        [y] if len(layers) == 1 else torch.split(y, [k.shape[1] for k in kernels], -1)
    )
    return [
        part.reshape(lead + shape)
        for part, shape in zip(parts, out_shapes, strict=True)
    ]


def _tf_linear(x, layer, in_axes, gelu, training):
    import tensorflow as tf

    dtype = layer.compute_dtype
    x = tf.cast(x, dtype)
    size = math.prod(x.shape[-in_axes:])
    kernel = tf.cast(layer.kernel, dtype)  # with the LoRA update, if any
    out_shape = list(kernel.shape[in_axes:])
    y = tf.matmul(tf.reshape(x, (-1, size)), tf.reshape(kernel, (size, -1)))
    if layer.bias is not None:
        y = tf.nn.bias_add(y, tf.reshape(tf.cast(layer.bias, dtype), (-1,)))
    if gelu and training:
        y = _tf_gelu(y)
    elif gelu:  # inference: oneDNN's remapper fuses it into the matmul kernel
        y = tf.nn.gelu(y, approximate=True)  # Keras' TensorFlow gelu
    # Static leading sizes stay static (a traced batch size is read at run time).
    dynamic = tf.shape(x)
    lead = [n if n is not None else dynamic[i] for i, n in enumerate(x.shape)]
    return tf.reshape(y, lead[: len(lead) - in_axes] + out_shape)


def _tf_gelu(x):
    """TensorFlow's tanh GELU with its forward and its gradient each one XLA loop.

    In TensorFlow's graph executor (Keras' default on a CPU) `tf.nn.gelu` runs as 8
    kernels forward and ~12 in its gradient, each a pass over the MLP's widest
    activation: one forward + backward on ViT-S/16 b8's ``(1568, 1536)`` took
    21–27 ms, against 8–9 ms compiled (2 CPU cores). The gradient is recomputed
    from ``x``. The same function and gradient to float32 round-off; a step that
    XLA compiles whole inlines both like any other function.
    """
    return _tf_compiled_gelu()(x)


@functools.cache
def _tf_compiled_gelu():
    import tensorflow as tf

    def gelu(x):
        return tf.nn.gelu(x, approximate=True)

    forward = tf.function(gelu, jit_compile=True, reduce_retracing=True)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def backward(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = gelu(x)
        return tape.gradient(y, x, dy)

    @tf.custom_gradient
    def compiled(x):
        return forward(x), lambda dy: backward(x, dy)

    return compiled


def _dense(layer, x, in_axes=1, gelu=False, training=None):
    """``layer(x)`` (then GELU), through one 2-D matmul where `_linear` can."""
    out = _linear(x, [layer], in_axes, gelu, training)
    if out is not None:
        return out[0]
    x = layer(x)
    return keras.activations.gelu(x, approximate=True) if gelu else x


@keras.saving.register_keras_serializable(package="keras_scalevit")
class LayerNorm(keras.layers.Layer):
    """LayerNorm over the last axis with Flax's statistics and names.

    Computes ``var = max(0, mean(x²) − mean(x)²)`` and
    ``y = (x − mean) · rsqrt(var + epsilon) · scale + bias`` in float32, with weights
    named ``scale`` and ``bias`` as in big_vision checkpoints. On the torch backend
    it calls torch's fused ``layer_norm`` (faster in eager mode) and on TensorFlow
    ``keras.ops.layer_normalization`` (what XLA compiles best there); their
    two-pass variance agrees with this one to float32 round-off for activations
    whose mean is not far larger than their spread (as in a ViT's residual stream).

    Args:
        epsilon: float. Added to the variance. big_vision (Flax) uses 1e-6.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Example:
    >>> import numpy as np, keras_scalevit
    >>> ln = keras_scalevit.models.LayerNorm()
    >>> tuple(ln(np.ones((2, 3, 8), "float32")).shape)
    (2, 3, 8)
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = check_positive_float("epsilon", epsilon)
        self.supports_masking = True

    def build(self, input_shape):
        dim = input_shape[-1]
        self.scale = self.add_weight(shape=(dim,), initializer="ones", name="scale")
        self.bias = self.add_weight(shape=(dim,), initializer="zeros", name="bias")

    def call(self, x):
        if keras.backend.backend() == "torch":
            # Eager torch runs each op as its own kernel: the fused native kernel
            # made the ViT-S/16 train step ~10% faster (benchmarks/peers.py). Its
            # two-pass variance equals the formula below to float32 round-off.
            # torch's own calls: each `keras.ops` call costs ~3-20 µs of Python.
            import torch

            y = torch.nn.functional.layer_norm(
                x.to(torch.float32),
                (x.shape[-1],),
                self.scale.value.to(torch.float32),
                self.bias.value.to(torch.float32),
                self.epsilon,
            )
            return y.to(getattr(torch, self.compute_dtype))
        x32 = ops.cast(x, "float32")
        if keras.backend.backend() == "tensorflow":
            # TensorFlow's autodiff of the formula below makes XLA (jit_compile=True,
            # Keras' default with an accelerator) recompute the gradient path of all
            # LayerNorms in huge fusions (ViT-S/16 forward+backward: 10.2 GB
            # accessed, a 1055-instruction fusion). Keras' layer_normalization
            # (tf.nn.moments: variance about a mean held constant in the backward
            # pass) compiles to 7.29 GB, largest fusion 44, and runs as fast in
            # graph mode. Same function to float32 round-off (two-pass variance).
            y = ops.layer_normalization(
                x32, gamma=self.scale, beta=self.bias, epsilon=self.epsilon
            )
            return ops.cast(y, self.compute_dtype)
        # x² is formed before mean(x) on purpose (as Flax does): autodiff then sums
        # the three gradient terms of x in Flax's order, and XLA keeps the backward
        # pass in small fusions. Traced the other way round, XLA CPU fuses the
        # gradient path of all LayerNorms into huge fusions that recompute it
        # (ViT-S/16 forward+backward: +63% bytes accessed; benchmarks/peers.py).
        x2 = ops.square(x32)
        mean = ops.mean(x32, axis=-1, keepdims=True)
        mean2 = ops.mean(x2, axis=-1, keepdims=True)
        var = ops.maximum(mean2 - ops.square(mean), 0.0)
        mul = ops.rsqrt(var + self.epsilon) * ops.cast(self.scale, "float32")
        y = (x32 - mean) * mul + ops.cast(self.bias, "float32")
        return ops.cast(y, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


class _FixedSeed(keras.random.SeedGenerator):
    """A seed generator that returns one given seed tensor (no state of its own)."""

    def __init__(self, seed):  # no state variable: do not call super().__init__
        self._fixed_seed = seed
        self._initial_seed = 0  # marks it as seeded (the torch backend checks)

    def next(self, ordered=True):
        return self._fixed_seed


def _dropout(layer, x, training, seed):
    """``layer(x)``, or the same dropout drawn from an explicit ``seed`` tensor."""
    if layer.rate == 0:  # the identity; skips a layer call (~65 µs in eager torch)
        return x
    if seed is None or not training:
        return layer(x, training=training)
    return keras.random.dropout(x, layer.rate, seed=_FixedSeed(seed))


@keras.saving.register_keras_serializable(package="keras_scalevit")
class MlpBlock(keras.layers.Layer):
    """Transformer MLP: Dense → tanh-approximated GELU → Dropout → Dense.

    Args:
        mlp_dim: int. Hidden width (big_vision default: 4 × width).
        dropout: float. Dropout rate after the GELU.
        **kwargs: base layer keyword arguments.

    Example:
    >>> import numpy as np, keras_scalevit
    >>> mlp = keras_scalevit.models.MlpBlock(mlp_dim=32)
    >>> tuple(mlp(np.ones((2, 5, 8), "float32")).shape)
    (2, 5, 8)
    """

    def __init__(self, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = check_positive_int("mlp_dim", mlp_dim)
        self.dropout = check_probability("dropout", dropout)
        self.dense_0 = keras.layers.Dense(
            mlp_dim,
            kernel_initializer="glorot_uniform",
            bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
            dtype=self.dtype_policy,
            name="Dense_0",
        )
        self.drop = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.dense_1 = None

    def build(self, input_shape):
        self.dense_0.build(input_shape)
        self.dense_1 = keras.layers.Dense(
            input_shape[-1],
            kernel_initializer="glorot_uniform",
            bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
            dtype=self.dtype_policy,
            name="Dense_1",
        )
        self.dense_1.build((*input_shape[:-1], self.mlp_dim))

    def call(self, x, training=None, dropout_seed=None):
        x = _dense(self.dense_0, x, gelu=True, training=training)
        x = _dropout(self.drop, x, training, dropout_seed)
        return _dense(self.dense_1, x)

    def get_config(self):
        return {
            **super().get_config(),
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
        }


def _einsum_attention(q, k, v, heads_first=False):
    """Unmasked softmax attention of ``(batch, tokens, heads, head_dim)`` inputs.

    With ``heads_first``, inputs and output are ``(batch, heads, tokens, head_dim)``.
    Flax's (big_vision's) math and order: the query is divided by
    ``sqrt(head_dim)`` before the scores. Under XLA (JAX, TensorFlow) this plain
    einsum + softmax compiles to a smaller program than `keras.ops.dot_product_attention`,
    whose JAX path regroups heads into 5-D and copies the transposed probabilities:
    ViT-S/16 forward+backward reads and writes 7% fewer bytes
    (benchmarks/peers.py). PyTorch uses its fused ``scaled_dot_product_attention``
    instead (`_torch_attention`): faster than einsum + softmax in eager mode.
    """
    qs, ks = ("bhqd", "bhkd") if heads_first else ("bqhd", "bkhd")
    depth = q.shape[-1]
    q = q / ops.cast(np.sqrt(np.float32(depth)), q.dtype)
    weights = ops.softmax(ops.einsum(f"{qs},{ks}->bhqk", q, k), axis=-1)
    return ops.einsum(f"bhqk,{ks}->{qs}", ops.cast(weights, v.dtype), v)


def _torch_attention(q, k, v):
    """torch's fused attention of ``(batch, tokens, heads, head_dim)`` views.

    The kernel `keras.ops.dot_product_attention` calls, given the transposed views
    as they are: Keras copies each into a contiguous tensor first (three copies
    per block); torch's function takes strided inputs.
    """
    import torch

    scale = 1.0 / math.sqrt(q.shape[-1])
    x = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
    )
    return x.transpose(1, 2)


@keras.saving.register_keras_serializable(package="keras_scalevit")
class MultiHeadDotProductAttention(keras.layers.Layer):
    """Multi-head dot-product attention with Flax's (and Keras MHA's) weight layout.

    ``query``/``key``/``value`` kernels are ``(width, heads, head_dim)`` with biases
    ``(heads, head_dim)``; ``out`` is ``(heads, head_dim, width)`` with bias
    ``(width,)``. No mask; scores are scaled by ``1/sqrt(head_dim)``. With
    ``flash_attention=False`` (default) the scores are a plain einsum + softmax as
    in Flax (on JAX with heads before tokens; on PyTorch torch's fused
    ``scaled_dot_product_attention``, and the query, key and value projections as one
    matmul); otherwise `keras.ops.dot_product_attention`. The weights are the
    ``query``, ``key``, ``value`` and ``out`` `EinsumDense` sublayers on every path.

    Args:
        num_heads: int. Number of heads; must divide the input width.
        flash_attention: bool or None. `False` (default): the plain path above;
            `True` asks `keras.ops.dot_product_attention` for a fused kernel
            (requires a supporting device); `None` lets Keras decide.
            Off by default: in Keras 3.15 the TPU Splash path can build a causal mask
            for unmasked inputs (keras-team/keras#21116).
        **kwargs: base layer keyword arguments.

    Example:
    >>> import numpy as np, keras_scalevit
    >>> att = keras_scalevit.models.MultiHeadDotProductAttention(num_heads=2)
    >>> x = np.ones((2, 5, 8), "float32")
    >>> tuple(att(x, x).shape)
    (2, 5, 8)
    """

    def __init__(self, num_heads, flash_attention=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.flash_attention = _check_flash_attention(flash_attention)

    def build(self, query_shape, key_value_shape=None):
        # Argument names must be call()'s names + "_shape" (Keras' build rule).
        width = query_shape[-1]
        if width % self.num_heads:
            raise ValueError(
                f"`num_heads` must divide the input width {width}, got "
                f"{self.num_heads}."
            )
        head_dim = width // self.num_heads
        self._head_dim = head_dim
        proj_init = _flat_glorot_uniform(width, width)
        kw = dict(dtype=self.dtype_policy, kernel_initializer=proj_init)
        shape = (None, self.num_heads, head_dim)
        self.query = keras.layers.EinsumDense(
            "btd,dhk->bthk", shape, bias_axes="hk", name="query", **kw
        )
        self.key = keras.layers.EinsumDense(
            "btd,dhk->bthk", shape, bias_axes="hk", name="key", **kw
        )
        self.value = keras.layers.EinsumDense(
            "btd,dhk->bthk", shape, bias_axes="hk", name="value", **kw
        )
        self.out = keras.layers.EinsumDense(
            "bthk,hkd->btd", (None, width), bias_axes="d", name="out", **kw
        )
        kv_shape = query_shape if key_value_shape is None else key_value_shape
        self.query.build(query_shape)
        self.key.build(kv_shape)
        self.value.build(kv_shape)
        self.out.build((*query_shape[:-1], self.num_heads, head_dim))

    def call(self, query, key_value=None):
        if (
            self.flash_attention is False
            and keras.backend.backend() == "jax"
            and _FAST_PATHS
            and not _any_quantized((self.query, self.key, self.value, self.out))
        ):
            kv = query if key_value is None else key_value
            return self._heads_first(query, kv)
        if key_value is None:  # self-attention: one matmul for q, k and v on torch
            qkv = _linear(query, [self.query, self.key, self.value])
            q, k, v = qkv or (self.query(query), self.key(query), self.value(query))
        else:
            q = _dense(self.query, query)
            k, v = _linear(key_value, [self.key, self.value]) or (
                self.key(key_value),
                self.value(key_value),
            )
        if self.flash_attention is False and keras.backend.backend() != "torch":
            x = _einsum_attention(q, k, v)
        elif self.flash_attention is False and _FAST_PATHS:
            x = _torch_attention(q, k, v)
        else:
            x = ops.dot_product_attention(
                q,
                k,
                v,
                scale=1.0 / math.sqrt(self._head_dim),
                flash_attention=self.flash_attention,
            )
        return _dense(self.out, x, in_axes=2)

    def _heads_first(self, query, key_value):
        """The attention with heads before tokens, between 2-D projection matmuls.

        The same math as the layers' calls; results differ by float32 round-off only
        (XLA may order a matmul's sums unlike the einsums'). On XLA's CPU backend the batched attention
        matmuls run ~25-45% faster on ``(batch, heads, tokens, head_dim)`` operands
        than on ``(batch, tokens, heads, head_dim)``. Each projection is one 2-D
        matmul over the flattened tokens with the transpose to (or from) heads-first
        outside it: written as einsums straight into that layout, XLA computed
        transposed products and copied every kernel and input to feed them (ViT-S/16
        forward+backward 7.41 GB accessed, against 6.89 this way). TensorFlow's graph
        executor ran the heads-first layout slower, so TensorFlow keeps the layers'.
        """
        dtype = self.compute_dtype

        def project(layer, x):
            kernel = ops.cast(layer.kernel, dtype)
            width, heads, head_dim = kernel.shape
            y = ops.matmul(
                ops.reshape(ops.cast(x, dtype), (-1, width)),
                ops.reshape(kernel, (width, heads * head_dim)),
            )
            y = y + ops.reshape(ops.cast(layer.bias, dtype), (heads * head_dim,))
            y = ops.reshape(y, (-1, x.shape[1], heads, head_dim))
            return ops.transpose(y, (0, 2, 1, 3))

        q = project(self.query, query)
        k = project(self.key, key_value)
        v = project(self.value, key_value)
        x = _einsum_attention(q, k, v, heads_first=True)
        heads, head_dim, width = self.out.kernel.shape
        x = ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, heads * head_dim))
        kernel = ops.reshape(
            ops.cast(self.out.kernel, dtype), (heads * head_dim, width)
        )
        y = ops.matmul(x, kernel) + ops.cast(self.out.bias, dtype)
        return ops.reshape(y, (-1, query.shape[1], width))

    def compute_output_shape(self, query_shape, key_value_shape=None):
        return query_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "flash_attention": self.flash_attention,
        }


@keras.saving.register_keras_serializable(package="keras_scalevit")
class EncoderBlock(keras.layers.Layer):
    """Pre-LN transformer block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

    Args:
        num_heads: int. Attention heads.
        mlp_dim: int. MLP hidden width.
        dropout: float. Rate after attention, inside the MLP and after the MLP.
        flash_attention: bool or None. See `MultiHeadDotProductAttention`.
        remat: bool. Recompute the block's activations in the backward pass
            (`keras.remat`) instead of storing them: less activation memory for
            about one more forward pass of compute.
        **kwargs: base layer keyword arguments.

    Example:
    >>> import numpy as np, keras_scalevit
    >>> blk = keras_scalevit.models.EncoderBlock(num_heads=2, mlp_dim=32)
    >>> tuple(blk(np.ones((2, 5, 8), "float32")).shape)
    (2, 5, 8)
    """

    def __init__(
        self,
        num_heads,
        mlp_dim,
        dropout=0.0,
        flash_attention=False,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.mlp_dim = check_positive_int("mlp_dim", mlp_dim)
        self.dropout = check_probability("dropout", dropout)
        self.flash_attention = _check_flash_attention(flash_attention)
        self.remat = check_bool("remat", remat)
        kw = dict(dtype=self.dtype_policy)
        self.ln_0 = LayerNorm(name="LayerNorm_0", **kw)
        self.attention = MultiHeadDotProductAttention(
            num_heads, flash_attention, name="MultiHeadDotProductAttention_0", **kw
        )
        self.ln_1 = LayerNorm(name="LayerNorm_1", **kw)
        self.mlp = MlpBlock(mlp_dim, dropout, name="MlpBlock_0", **kw)
        self.drop = keras.layers.Dropout(dropout, **kw)

    def build(self, input_shape):
        self.ln_0.build(input_shape)
        self.attention.build(input_shape)
        self.ln_1.build(input_shape)
        self.mlp.build(input_shape)

    def _forward(self, x, training, seeds=(None, None, None)):
        y = self.attention(self.ln_0(x))
        x = x + _dropout(self.drop, y, training, seeds[0])
        y = self.mlp(self.ln_1(x), training=training, dropout_seed=seeds[1])
        return x + _dropout(self.drop, y, training, seeds[2])

    def call(self, x, training=None):
        seeds = (None, None, None)
        if training and self.dropout > 0:
            # The three dropout seeds are drawn up front (outside any remat): the
            # recomputation in the backward pass then draws the same masks, and no
            # RNG state update leaks out of it. Same masks with and without remat.
            seeds = tuple(self.drop.seed_generator.next() for _ in range(3))
        if not (self.remat and training):
            return self._forward(x, training, seeds)
        # `keras.remat` wraps a function of tensors only; `training` is closed over
        # (a Python bool/None argument breaks jax.checkpoint and tf.recompute_grad).
        return keras.remat(lambda t: self._forward(t, training, seeds))(x)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "flash_attention": self.flash_attention,
            "remat": self.remat,
        }


@keras.saving.register_keras_serializable(package="keras_scalevit")
class PatchEmbedding(keras.layers.Layer):
    """Patch stem: a ``patch × patch`` convolution with stride ``patch``, flattened.

    Maps images ``(n, H, W, 3)`` to tokens ``(n, (H/P)·(W/P), width)`` in row-major
    grid order. The kernel is ``(P, P, 3, width)`` (HWIO, as big_vision), LeCun-normal.

    Args:
        width: int. Token width.
        patch_size: int or (int, int). Patch height and width.
        **kwargs: base layer keyword arguments.

    Example:
    >>> import numpy as np, keras_scalevit
    >>> emb = keras_scalevit.models.PatchEmbedding(width=8, patch_size=4)
    >>> tuple(emb(np.ones((2, 16, 16, 3), "float32")).shape)
    (2, 16, 8)
    """

    def __init__(self, width, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.width = check_positive_int("width", width)
        self.patch_size = _pair(patch_size, "patch_size")

    def build(self, input_shape):
        check_image_shape("images", input_shape)
        self.kernel = self.add_weight(
            shape=(*self.patch_size, input_shape[-1], self.width),
            initializer="lecun_normal",
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.width,), initializer="zeros", name="bias"
        )

    def call(self, images):
        check_image_shape("images", images.shape)
        x = ops.conv(
            ops.cast(images, self.compute_dtype),
            ops.cast(self.kernel, self.compute_dtype),
            strides=self.patch_size,
            padding="valid",
            data_format="channels_last",
        )
        x = x + ops.cast(self.bias, self.compute_dtype)
        n, h, w, d = ops.shape(x)
        return ops.reshape(x, (n, h * w, d))

    def compute_output_shape(self, input_shape):
        h = input_shape[1] // self.patch_size[0] if input_shape[1] else None
        w = input_shape[2] // self.patch_size[1] if input_shape[2] else None
        return (input_shape[0], h * w if h and w else None, self.width)

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "patch_size": self.patch_size,
        }


@keras.saving.register_keras_serializable(package="keras_scalevit")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned or 2-D sin-cos position embedding to the patch tokens.

    Args:
        grid_size: (int, int). Patch grid ``(h, w)``; tokens are row-major.
        posemb: str. ``"learn"`` (a ``(1, h·w, width)`` weight named
            ``pos_embedding``, Normal(std 1/√width)) or ``"sincos2d"`` (fixed,
            big_vision's ordering ``[sin x, cos x, sin y, cos y]``; width % 4 == 0).
        **kwargs: base layer keyword arguments.

    Example:
    >>> import numpy as np, keras_scalevit
    >>> pe = keras_scalevit.models.PositionEmbedding((2, 3), "sincos2d")
    >>> tuple(pe(np.zeros((1, 6, 8), "float32")).shape)
    (1, 6, 8)
    """

    def __init__(self, grid_size, posemb="learn", **kwargs):
        super().__init__(**kwargs)
        self.posemb = check_choice("posemb", posemb, POSEMB_TYPES)
        self.grid_size = _pair(grid_size, "grid_size")

    def build(self, input_shape):
        width = input_shape[-1]
        h, w = self.grid_size
        if len(input_shape) != 3 or input_shape[1] not in (None, h * w):
            raise ValueError(
                f"The input of PositionEmbedding must have shape (batch, {h * w}, "
                f"width) for `grid_size`={self.grid_size}, got shape "
                f"{tuple(input_shape)}."
            )
        if self.posemb == "learn":
            self.pos_embedding = self.add_weight(
                shape=(1, h * w, width),
                initializer=keras.initializers.RandomNormal(
                    stddev=1 / math.sqrt(width)
                ),
                name="pos_embedding",
            )
        else:
            self._table = posemb_sincos2d(h, w, width)

    def call(self, x):
        if self.posemb == "learn":
            return x + ops.cast(self.pos_embedding, x.dtype)
        return x + ops.cast(self._table, x.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "grid_size": self.grid_size,
            "posemb": self.posemb,
        }


@keras.saving.register_keras_serializable(package="keras_scalevit")
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token (zeros init, weight ``cls``) to the tokens.

    big_vision adds it after the position embedding, so it carries no posemb.

    Example:
    >>> import numpy as np, keras_scalevit
    >>> tok = keras_scalevit.models.ClassToken()
    >>> tuple(tok(np.zeros((2, 6, 8), "float32")).shape)
    (2, 7, 8)
    """

    def build(self, input_shape):
        self.cls = self.add_weight(
            shape=(1, 1, input_shape[-1]), initializer="zeros", name="cls"
        )

    def call(self, x):
        cls = ops.broadcast_to(
            ops.cast(self.cls, x.dtype), (ops.shape(x)[0], 1, x.shape[-1])
        )
        return ops.concatenate([cls, x], axis=1)

    def compute_output_shape(self, input_shape):
        n = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], n, input_shape[2])


@keras.saving.register_keras_serializable(package="keras_scalevit")
class MAPHead(keras.layers.Layer):
    """Multi-head attention pooling: a learned probe attends over the tokens.

    ``x = MHA(probe, tokens)``; ``x = x + MLP(LN(x))``; returns ``x[:, 0]``. As in
    big_vision there is no LayerNorm before the attention and no residual from the
    probe; the MLP width is the encoder's ``mlp_dim``.

    Args:
        num_heads: int. Attention heads.
        mlp_dim: int. MLP hidden width.
        flash_attention: bool or None. See `MultiHeadDotProductAttention`.
        **kwargs: base layer keyword arguments.

    Example:
    >>> import numpy as np, keras_scalevit
    >>> head = keras_scalevit.models.MAPHead(num_heads=2, mlp_dim=32)
    >>> tuple(head(np.ones((2, 5, 8), "float32")).shape)
    (2, 8)

    Reference:
    - [Zhai et al., Scaling Vision Transformers](https://arxiv.org/abs/2106.04560)
    """

    def __init__(self, num_heads, mlp_dim, flash_attention=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.mlp_dim = check_positive_int("mlp_dim", mlp_dim)
        self.flash_attention = _check_flash_attention(flash_attention)
        kw = dict(dtype=self.dtype_policy)
        self.attention = MultiHeadDotProductAttention(
            num_heads, flash_attention, name="MultiHeadDotProductAttention_0", **kw
        )
        self.ln = LayerNorm(name="LayerNorm_0", **kw)
        self.mlp = MlpBlock(mlp_dim, name="MlpBlock_0", **kw)

    def build(self, input_shape):
        width = input_shape[-1]
        self.probe = self.add_weight(
            shape=(1, 1, width), initializer="glorot_uniform", name="probe"
        )
        self.attention.build((input_shape[0], 1, width), input_shape)
        self.ln.build((input_shape[0], 1, width))
        self.mlp.build((input_shape[0], 1, width))

    def call(self, x):
        probe = ops.cast(self.probe, x.dtype)
        probe = ops.broadcast_to(probe, (ops.shape(x)[0], 1, x.shape[-1]))
        y = self.attention(probe, x)
        y = y + self.mlp(self.ln(y))
        return y[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "flash_attention": self.flash_attention,
        }


def _pair(value, name):
    """``(int, int)`` from an int or a pair of ints, each >= 1."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"`{name}` must be an integer >= 1 or a pair of them, got "
                f"{value!r} ({len(value)} entries)."
            )
        return tuple(check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (str, bytes, dict, set)) or value is None:
        raise TypeError(
            f"`{name}` must be an integer >= 1 or a pair of them, got {value!r}."
        )
    n = check_positive_int(name, value)
    return (n, n)


def _check_flash_attention(value):
    if value is None:
        return None
    return check_bool("flash_attention", value)


def check_image_shape(name, shape, image_size=None):
    """Raises unless ``shape`` is ``(batch, H, W, 3)`` (``image_size`` if given).

    Static shapes only (known dimensions are compared, unknown ones pass), so it is
    safe inside compiled functions on every backend.
    """
    shape = tuple(shape)
    h, w = image_size if image_size is not None else (None, None)
    expected = (None, h, w, 3)
    what = "images: batch, height, width, 3 RGB channels"
    if image_size is not None:
        what = f"images of {h}x{w} pixels with 3 RGB channels"
    if len(shape) != 4 or shape[-1] not in (None, 3):
        what += "; keras-scalevit models take RGB images (repeat a grayscale channel)"
    return check_shape(name, shape, expected, what=what)
