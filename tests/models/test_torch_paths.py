"""torch's fused kernels in the ViT layers equal the Keras-layer path.

On torch the projections run as ``torch.nn.functional.linear`` (query, key and value
as one matmul) and attention as ``scaled_dot_product_attention`` on strided views
(`vit_layers._TORCH_FAST_PATHS`). Outputs and gradients must equal those of Keras'
own ``Dense`` / ``EinsumDense`` layers and ``ops.dot_product_attention`` to float32
round-off: the bias enters the matmul's sum instead of being added after it, so each
projection may differ by an ulp.
"""

import keras
import numpy as np
import pytest
from conftest import BACKEND

from keras_scalevit.models import ViTClassifier
from keras_scalevit.models.vit import vit_layers

pytestmark = pytest.mark.skipif(
    BACKEND != "torch", reason="the fused paths exist on the torch backend only"
)

# Relative to the largest value of each output / gradient: a few float32 ulps
# through two blocks (measured ~4e-7 on ViT-B/16's logits); 10x margin.
TOL = 5e-6


def _outputs_and_grads(model, x, weights, fast, monkeypatch):

    monkeypatch.setattr(vit_layers, "_TORCH_FAST_PATHS", fast)
    for v in model.trainable_variables:
        v.value.grad = None
    out = model(x, training=False)
    (out * weights).sum().backward()
    grads = {
        v.path: v.value.grad.detach().numpy().copy() for v in model.trainable_variables
    }
    assert all(np.isfinite(g).all() for g in grads.values())
    return out.detach().numpy(), grads


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
def test_fast_paths_equal_keras_layers(kwargs, monkeypatch):
    keras.utils.set_random_seed(1)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=16, head_zeroinit=False, **kwargs
    )
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(
        rng.uniform(-1, 1, (3, 16, 16, 3)).astype("float32")
    )
    w = keras.ops.convert_to_tensor(rng.normal(size=(3, 5)).astype("float32"))
    out_fast, g_fast = _outputs_and_grads(model, x, w, True, monkeypatch)
    out_keras, g_keras = _outputs_and_grads(model, x, w, False, monkeypatch)
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


def test_lora_kernel_is_used(monkeypatch):
    """A LoRA-enabled Dense runs its merged kernel on the fast path too."""
    keras.utils.set_random_seed(2)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=16, head_zeroinit=False
    )
    dense = model.backbone.get_layer("encoderblock_0").mlp.dense_0
    dense.enable_lora(2)
    dense.lora_kernel_b.assign(np.full(dense.lora_kernel_b.shape, 0.5, "float32"))
    x = np.random.default_rng(3).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    monkeypatch.setattr(vit_layers, "_TORCH_FAST_PATHS", True)
    fast = keras.ops.convert_to_numpy(model(x))
    monkeypatch.setattr(vit_layers, "_TORCH_FAST_PATHS", False)
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
    monkeypatch.setattr(vit_layers, "_TORCH_FAST_PATHS", True)
    fast = keras.ops.convert_to_numpy(model(x))
    monkeypatch.setattr(vit_layers, "_TORCH_FAST_PATHS", False)
    plain = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_array_equal(fast, plain)
