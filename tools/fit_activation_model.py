"""Refit the planner's activation model to what XLA allocates for the train step.

`keras_scalevit.scaling.plan` counts the activations a ViT block keeps for its
backward pass as ``ACT_D·T·D + ACT_M·T·M + ACT_ATT·H·T²`` elements per example (``T``
tokens, width ``D``, MLP ``M``, ``H`` heads). This script compiles the Keras train
step (JAX backend, one device, `Adafactor`, sigmoid cross-entropy, parameters and
optimizer state donated) for each configuration in ``FIT``, reads XLA's temporaries
from ``memory_analysis()``, takes away what the plan counts outside the blocks
(gradients, stem, head), and fits the three coefficients to the rest by least
squares on relative error. It prints the fit, the integers it rounds up to (a plan
that errs should err towards more memory than XLA takes), and the plan's ratio to XLA
on every configuration with those and with the current coefficients. Copy the
rounded ones into ``plan.py`` when the model's graph or XLA changes (the test
`tests/scaling/test_scaling_plan.py` checks four other configurations against the
compiler, within 20%).

    KERAS_BACKEND=jax python tools/fit_activation_model.py

Eleven compiles of small models: 90 s on 2 CPU cores.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

# Tokens 16-256, widths 32-128, MLPs 1-4x, heads 1-8, depths 1-3: none of them is
# one of the test's four configurations, which stay held out.
FIT = [
    dict(batch=8, image_size=16, width=64, depth=1, mlp_dim=256, num_heads=2),
    dict(batch=8, image_size=32, width=32, depth=2, mlp_dim=64, num_heads=1),
    dict(batch=8, image_size=32, width=96, depth=1, mlp_dim=384, num_heads=6),
    dict(batch=4, image_size=48, width=48, depth=2, mlp_dim=96, num_heads=3),
    dict(batch=4, image_size=64, width=64, depth=1, mlp_dim=128, num_heads=4),
    dict(batch=2, image_size=64, width=32, depth=3, mlp_dim=256, num_heads=2),
    dict(batch=16, image_size=24, width=64, depth=2, mlp_dim=128, num_heads=4),
    dict(batch=8, image_size=40, width=128, depth=1, mlp_dim=256, num_heads=8),
    dict(batch=4, image_size=56, width=64, depth=2, mlp_dim=256, num_heads=2),
    dict(batch=12, image_size=32, width=48, depth=3, mlp_dim=192, num_heads=3),
    dict(batch=8, image_size=16, width=128, depth=2, mlp_dim=512, num_heads=4),
]
VARIANT, PATCH, NUM_CLASSES = "mu/4", 4, 10  # ``mu/4``: the shape comes from cfg


def compiled_memory(cfg):
    """XLA's ``memory_analysis()`` of the train step for ``cfg`` (a ``FIT`` entry)."""
    import jax
    import keras

    from keras_scalevit import losses
    from keras_scalevit.models import ViTClassifier
    from keras_scalevit.optimizers import Adafactor

    if keras.backend.backend() != "jax":
        raise RuntimeError(
            "compiled_memory compiles with jax.jit: run with KERAS_BACKEND=jax, "
            f"got {keras.backend.backend()!r}."
        )
    cfg = dict(cfg)
    batch, image_size = cfg.pop("batch"), cfg.pop("image_size")
    keras.backend.clear_session()
    model = ViTClassifier.from_variant(
        VARIANT,
        num_classes=NUM_CLASSES,
        image_size=image_size,
        pool_type="map",
        **cfg,
    )
    optimizer = Adafactor(1e-3)
    optimizer.build(model.trainable_variables)
    loss_fn = losses.get("sigmoid_xent")

    def train_step(trainable, non_trainable, opt_vars, x, y):
        def loss(trainable):
            logits, nt = model.stateless_call(
                trainable, non_trainable, x, training=True
            )
            return loss_fn(y, logits), nt

        (value, nt), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return trainable, nt, opt_vars, value

    args = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
        jax.ShapeDtypeStruct((batch, image_size, image_size, 3), "float32"),
        jax.ShapeDtypeStruct((batch, NUM_CLASSES), "float32"),
    )
    compiled = jax.jit(train_step, donate_argnums=(0, 2)).lower(*args).compile()
    return compiled.memory_analysis()


def planned(cfg):
    """The plan's temporaries (gradients + activations), bytes."""
    from keras_scalevit.scaling import plan

    cfg = dict(cfg)
    batch, image_size = cfg.pop("batch"), cfg.pop("image_size")
    p = plan(
        VARIANT,
        batch_size=batch,
        image_size=image_size,
        num_classes=NUM_CLASSES,
        pool_type="map",
        **cfg,
    )
    return p.gradient_bytes + p.activation_bytes


def block_bytes(cfg):
    """float32 bytes per unit of ``(ACT_D, ACT_M, ACT_ATT)``, all blocks together."""
    t = (cfg["image_size"] // PATCH) ** 2
    per = np.array([t * cfg["width"], t * cfg["mlp_dim"], cfg["num_heads"] * t * t])
    return 4.0 * cfg["batch"] * cfg["depth"] * per


def fit(features, temps, rest):
    """Coefficients minimising the relative error of ``features @ c + rest``."""
    weight = 1.0 / temps
    coef, *_ = np.linalg.lstsq(
        features * weight[:, None], (temps - rest) * weight, rcond=None
    )
    return coef


def main():
    import importlib

    plan_module = importlib.import_module("keras_scalevit.scaling.plan")
    current = np.array(
        [plan_module.ACT_D, plan_module.ACT_M, plan_module.ACT_ATT], float
    )
    features, temps, rest = [], [], []
    for i, cfg in enumerate(FIT):
        temp = compiled_memory(cfg).temp_size_in_bytes
        feats = block_bytes(cfg)
        features.append(feats)
        temps.append(temp)
        rest.append(planned(cfg) - feats @ current)  # what the plan counts outside
        print(f"[{i + 1}/{len(FIT)}] {cfg}: XLA {temp / 1e6:.2f} MB", flush=True)
    features, temps, rest = map(np.array, (features, temps, rest))
    coef = fit(features, temps, rest)
    # Rounded up: a plan that errs should err towards more memory than XLA takes.
    rounded = np.maximum(np.ceil(coef), 1)
    print(f"\nleast squares: ACT_D {coef[0]:.2f}, ACT_M {coef[1]:.2f}, "
          f"ACT_ATT {coef[2]:.2f}")  # fmt: skip
    for name, c in (("rounded up", rounded), ("current", current)):
        ratio = (features @ c + rest) / temps
        print(f"{name} ({', '.join(f'{v:g}' for v in c)}): plan/XLA "
              f"{ratio.min():.2f}-{ratio.max():.2f}: " + " ".join(f"{r:.3f}" for r in ratio))  # fmt: skip
    return coef, rounded


if __name__ == "__main__":
    main()
