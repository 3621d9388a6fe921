"""LayerNorm against a float64 reference, on every backend (torch uses its fused kernel)."""

import keras
import numpy as np
import pytest

from keras_scalevit.models import LayerNorm


def _reference(x, scale, bias, epsilon):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * scale + bias


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_layer_norm_matches_float64(offset):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 7, 64)) + offset).astype("float32")
    ln = LayerNorm()
    ln.build(x.shape)
    scale = rng.normal(size=64).astype("float32")
    bias = rng.normal(size=64).astype("float32")
    ln.scale.assign(scale)
    ln.bias.assign(bias)
    got = keras.ops.convert_to_numpy(ln(x))
    want = _reference(x, scale, bias, 1e-6)
    # float32 statistics over 64 values: a few ulps of the normalised value (~4),
    # times |scale| (<= ~3); mean(x²) - mean² loses ~offset² / var ulps more.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * (1 + offset**2))


def test_layer_norm_keeps_the_compute_dtype():
    ln = LayerNorm(dtype="mixed_bfloat16")
    y = ln(np.ones((1, 3, 8), "float32") * np.arange(8, dtype="float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
