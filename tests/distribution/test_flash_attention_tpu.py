"""`flash_attention` stays opt-in; on a TPU the fused kernel matches the plain path."""

import keras
import numpy as np
import pytest

from tests.conftest import BACKEND


def _on_tpu():
    if BACKEND != "jax":
        return False
    import jax

    return jax.default_backend() == "tpu"


def test_flash_attention_is_opt_in():
    import keras_scalevit

    model = keras_scalevit.models.ViTClassifier.from_variant(
        "mu/8", num_classes=4, image_size=16, pool_type="map"
    )
    assert model.backbone.flash_attention is False
    layers = [b.attention for b in model.backbone.blocks] + [model.map_head.attention]
    assert layers and all(layer.flash_attention is False for layer in layers)


@pytest.mark.skipif(
    not _on_tpu(),
    reason="the fused (Splash) attention kernel runs on TPU only; this run has "
    f"KERAS_BACKEND={BACKEND} without a TPU.",
)
def test_flash_attention_matches_plain_attention_on_tpu():
    from keras_scalevit.models import MultiHeadDotProductAttention

    rng = np.random.default_rng(0)
    # A ViT-B/16-like shape: 197 tokens (class token), 12 heads of 64.
    x = rng.normal(size=(4, 197, 768)).astype("float32")
    plain = MultiHeadDotProductAttention(12, flash_attention=False)
    fused = MultiHeadDotProductAttention(12, flash_attention=True)
    plain.build(x.shape)
    fused.build(x.shape)
    fused.set_weights(plain.get_weights())
    want = keras.ops.convert_to_numpy(plain(x))
    got = keras.ops.convert_to_numpy(fused(x))
    # No mask: a causal mask (keras-team/keras#21116) would change most rows by O(1).
    # TPU matmuls run float32 inputs through bfloat16 passes by default, so both
    # paths carry ~1e-3 relative error; a wrong mask or scale is far above it.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * np.abs(want).max())
