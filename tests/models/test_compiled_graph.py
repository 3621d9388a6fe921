"""What XLA compiles for a ViT's forward + backward pass (JAX and TensorFlow).

XLA's fusion passes are sensitive to how the LayerNorm gradient is traced: written
one way, they pull the gradient path of every LayerNorm into fusions of hundreds of
instructions that recompute it (ViT-S/16: +63% bytes accessed on JAX, +40% on
TensorFlow; README, Speed). A compiled program's fusions must stay small. No
timing: this reads the optimised HLO.
"""

import keras
import numpy as np
import pytest
from conftest import BACKEND, load_peers

from keras_scalevit.models import ViTBackbone, ViTClassifier

pytestmark = pytest.mark.skipif(
    BACKEND == "torch", reason="torch runs eagerly here: there is no XLA program"
)

# At this size the largest fusion has 47-48 instructions on either backend; with
# the LayerNorm traced the old ways it had 289 (JAX, mean(x) before x²) and 399
# (TensorFlow, the one-pass variance), growing with depth (1055 for ViT-S/16).
MAX_FUSION = 100


def _optimised_hlo(model, x, y):
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
    if BACKEND == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        others = [v.value for v in model.non_trainable_variables]

        def loss(trainable, x, y):
            logits, _ = model.stateless_call(trainable, others, x, training=True)
            return loss_fn(y, logits)

        step = jax.jit(jax.value_and_grad(loss))
        return step.lower(trainable, x, y).compile().as_text()
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return loss, tape.gradient(loss, model.trainable_variables)

    x, y = tf.constant(x), tf.constant(y)
    return step.experimental_get_compiler_ir(x, y)(stage="optimized_hlo")


@pytest.mark.parametrize("pool_type", ["gap", "map"])
def test_forward_backward_has_no_large_fusion(pool_type):
    backbone = ViTBackbone(
        image_size=32, patch_size=8, width=64, depth=4, num_heads=2, mlp_dim=128
    )
    model = ViTClassifier(
        backbone, num_classes=10, pool_type=pool_type, head_zeroinit=False
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[[3, 7]]
    sizes = load_peers().fusion_sizes(_optimised_hlo(model, x, y))
    assert sizes, "no fusion found: the HLO text format changed"
    assert max(sizes) <= MAX_FUSION, sorted(sizes)[-5:]
