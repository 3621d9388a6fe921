"""The ViT layers' fast paths on each backend equal the Keras-layer path.

On torch the projections run as ``torch.nn.functional.linear`` (query, key and value
as one matmul) and attention as ``scaled_dot_product_attention`` on strided views; on
TensorFlow as 2-D ``MatMul`` + ``BiasAdd`` (+ GELU, which oneDNN fuses into the MLP's
first matmul); on JAX attention runs with heads before tokens, projected there by
einsums (`vit_layers._FAST_PATHS`). Outputs and gradients must equal those of
Keras' own ``Dense`` / ``EinsumDense`` layers, GELU and ``ops.dot_product_attention``
to float32 round-off: the bias enters the matmul's sum instead of being added after
it, so each projection may differ by an ulp.
"""

import keras
import numpy as np
import pytest
from conftest import BACKEND

from keras_scalevit.models import ViTClassifier
from keras_scalevit.models.vit import vit_layers

# Relative to the largest value of each output / gradient: a few float32 ulps
# through two blocks (measured ~4e-7 on ViT-B/16's logits); 10x margin.
TOL = 5e-6


def _outputs_and_grads(model, x, weights, fast, monkeypatch, training=False):
    monkeypatch.setattr(vit_layers, "_FAST_PATHS", fast)
    variables = model.trainable_variables
    if BACKEND == "torch":
        for v in variables:
            v.value.grad = None
        out = model(x, training=training)
        (out * weights).sum().backward()
        grads = [v.value.grad.detach().numpy().copy() for v in variables]
    elif BACKEND == "jax":
        import jax

        values = [v.value for v in variables]
        frozen = [v.value for v in model.non_trainable_variables]

        def loss_fn(values):
            out, _ = model.stateless_call(values, frozen, x, training=training)
            return (out * weights).sum(), out

        (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(values)
        grads = [np.asarray(g) for g in grads]
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            out = model(x, training=training)
            loss = tf.reduce_sum(out * weights)
        grads = [g.numpy() for g in tape.gradient(loss, variables)]
    grads = {v.path: g for v, g in zip(variables, grads, strict=True)}
    assert all(np.isfinite(g).all() for g in grads.values())
    return keras.ops.convert_to_numpy(out), grads


def _assert_close(a, b, name, scale=None):
    scale = np.abs(b).max() if scale is None else scale
    err = np.abs(a.astype(np.float64) - b).max() / max(scale, 1e-30)
    assert err <= TOL, (name, err)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pool_type="gap"),
        dict(pool_type="map"),
        dict(pool_type="tok", class_token=True),
    ],
    ids=["gap", "map", "tok"],
)
# training=True: on TensorFlow the MLP's GELU then runs as XLA kernels (`_tf_gelu`).
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
def test_fast_paths_equal_keras_layers(kwargs, training, monkeypatch):
    keras.utils.set_random_seed(1)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=16, head_zeroinit=False, **kwargs
    )
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(
        rng.uniform(-1, 1, (3, 16, 16, 3)).astype("float32")
    )
    w = keras.ops.convert_to_tensor(rng.normal(size=(3, 5)).astype("float32"))
    out_fast, g_fast = _outputs_and_grads(model, x, w, True, monkeypatch, training)
    out_keras, g_keras = _outputs_and_grads(model, x, w, False, monkeypatch, training)
    assert not np.array_equal(out_fast, np.zeros_like(out_fast))
    _assert_close(out_fast, out_keras, "logits")
    for path in g_keras:
        # Relative to the largest gradient of the variable's layer: the key bias's
        # gradient is zero in exact arithmetic (softmax ignores a shift shared by
        # all scores), so both paths hold round-off there, of the size of an ulp of
        # the layer's other gradients.
        layer = path.rsplit("/", 2)[0]
        scale = max(np.abs(g).max() for p, g in g_keras.items() if p.startswith(layer))
        _assert_close(g_fast[path], g_keras[path], path, scale)


@pytest.mark.parametrize("layer", ["mlp.dense_0", "attention.query"])
def test_lora_kernel_is_used(layer, monkeypatch):
    """A LoRA-enabled (Einsum)Dense runs its merged kernel on the fast path too."""
    keras.utils.set_random_seed(2)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=16, head_zeroinit=False
    )
    dense = model.backbone.get_layer("encoderblock_0")
    for name in layer.split("."):
        dense = getattr(dense, name)
    dense.enable_lora(2)
    dense.lora_kernel_b.assign(np.full(dense.lora_kernel_b.shape, 0.5, "float32"))
    x = np.random.default_rng(3).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    monkeypatch.setattr(vit_layers, "_FAST_PATHS", True)
    fast = keras.ops.convert_to_numpy(model(x))
    monkeypatch.setattr(vit_layers, "_FAST_PATHS", False)
    plain = keras.ops.convert_to_numpy(model(x))
    _assert_close(fast, plain, "logits with LoRA")
    dense.lora_kernel_b.assign(np.zeros(dense.lora_kernel_b.shape, "float32"))
    assert np.abs(keras.ops.convert_to_numpy(model(x)) - plain).max() > 1e-4


def test_quantized_layers_run_as_themselves(monkeypatch):
    keras.utils.set_random_seed(4)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=16, head_zeroinit=False
    )
    model.quantize("int8")
    x = np.random.default_rng(5).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    monkeypatch.setattr(vit_layers, "_FAST_PATHS", True)
    fast = keras.ops.convert_to_numpy(model(x))
    monkeypatch.setattr(vit_layers, "_FAST_PATHS", False)
    plain = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_array_equal(fast, plain)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's graph mode")
def test_tensorflow_graph_mode_equals_keras_layers(monkeypatch):
    """In a `tf.function` (what `compile()` runs on a CPU), where Grappler's oneDNN
    remapper fuses the first MLP matmul with its bias and GELU into one kernel, and
    where a training step's GELU calls two XLA-compiled functions (`_tf_gelu`)."""
    import tensorflow as tf

    keras.utils.set_random_seed(6)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=16, head_zeroinit=False, pool_type="map"
    )
    rng = np.random.default_rng(7)
    x = tf.constant(rng.uniform(-1, 1, (3, 16, 16, 3)).astype("float32"))
    w = tf.constant(rng.normal(size=(3, 5)).astype("float32"))
    variables = model.trainable_variables

    def train(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True) * w)
        return loss, tape.gradient(loss, variables)

    outs, losses, grads = {}, {}, {}
    for fast in (True, False):
        monkeypatch.setattr(vit_layers, "_FAST_PATHS", fast)
        outs[fast] = tf.function(lambda x: model(x, training=False))(x).numpy()
        loss, g = tf.function(train)(x)
        losses[fast], grads[fast] = loss.numpy(), [t.numpy() for t in g]
    assert not np.array_equal(outs[True], np.zeros_like(outs[True]))
    _assert_close(outs[True], outs[False], "logits in graph mode")
    _assert_close(losses[True], losses[False], "training loss in graph mode")
    for v, fast, plain in zip(variables, grads[True], grads[False], strict=True):
        layer = v.path.rsplit("/", 2)[0]
        scale = max(
            np.abs(g).max()
            for u, g in zip(variables, grads[False], strict=True)
            if u.path.startswith(layer)
        )
        _assert_close(fast, plain, v.path, scale)


def test_predict_equals_keras_layers(monkeypatch):
    """Inference without a gradient, as `predict` runs it (on torch the MLP's GELU
    then runs in place), gives the Keras layers' logits for the same input."""
    keras.utils.set_random_seed(8)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=16, head_zeroinit=False
    )
    x = np.random.default_rng(9).uniform(-1, 1, (3, 16, 16, 3)).astype("float32")
    outs = {}
    for fast in (True, False):
        monkeypatch.setattr(vit_layers, "_FAST_PATHS", fast)
        model.predict_function = None  # traced anew for each setting
        outs[fast] = keras.ops.convert_to_numpy(model.predict_on_batch(x))
    assert not np.array_equal(outs[True], np.zeros_like(outs[True]))
    _assert_close(outs[True], outs[False], "predicted logits")
