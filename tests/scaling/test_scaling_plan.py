"""The planner against the real model, the real optimizer and XLA's compiled step."""

import math

import keras
import numpy as np
import pytest
from conftest import load_script

from keras_scalevit.models import ViTClassifier
from keras_scalevit.optimizers import Adafactor, MomentumHP
from keras_scalevit.scaling import plan
from keras_scalevit.scaling.plan import main as plan_main
from keras_scalevit.scaling.plan import optimizer_state_bytes, variable_shapes

# Measured (jax 0.10.2, CPU): XLA's temporaries / the plan's gradients +
# activations = 0.986, 1.053, 1.018 and 0.963 on the four held-out XLA_CONFIGS
# below (the activation model was fitted on 11 other configurations by
# tools/fit_activation_model.py, 0.97-1.24x of them). The deviation is a modelling
# error (buffer-assignment packing and fusion the per-tensor model averages over,
# worst with few tokens), not round-off; 20% covers the fit set. It still catches a
# missing term on these configurations: leaving out the attention maps changes the
# plan by 28%, 31%, 69% and 7%, the MLP hidden by 19%, 21%, 8% and 26%.
ACTIVATION_TOLERANCE = 0.2


def _fit_tool():
    """``tools/fit_activation_model.py``, which refits the activation model."""
    return load_script("tools", "fit_activation_model.py")


SMALL = [
    dict(variant="mu/4", image_size=16, num_classes=10, pool_type="map"),
    dict(variant="mu/4", image_size=16, num_classes=0, pool_type="gap", rep_size=8),
    dict(variant="mu/8", image_size=32, num_classes=3, pool_type="tok", rep_size=True),
    dict(
        variant="mu/4",
        image_size=16,
        num_classes=5,
        pool_type="map",
        posemb="sincos2d",
        width=64,
        depth=2,
        num_heads=4,
        mlp_dim=96,
    ),
]


def _model(cfg):
    cfg = dict(cfg)
    variant = cfg.pop("variant")
    return ViTClassifier.from_variant(variant, **cfg)


def _nbytes(variables):
    return sum(
        int(np.prod(v.shape))
        * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        if v.dtype != "bfloat16"
        else int(np.prod(v.shape)) * 2
        for v in variables
    )


@pytest.mark.parametrize("cfg", SMALL, ids=lambda c: str(sorted(c.items())))
def test_variable_shapes_are_the_models(cfg):
    model = _model(cfg)
    expected = [(v.path, tuple(v.shape)) for v in model.weights]
    kw = {k: v for k, v in cfg.items() if k != "variant"}
    assert sorted(variable_shapes(cfg["variant"], **kw)) == sorted(expected)


@pytest.mark.parametrize("cfg", SMALL[:2] + SMALL[3:], ids=["map", "gap", "wide"])
def test_optimizer_bytes_are_the_optimizers_slots(cfg):
    model = _model(cfg)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    for name, optimizer in (
        ("adafactor", Adafactor(1e-3)),
        ("momentum_hp", MomentumHP(1e-3)),
        ("adam", keras.optimizers.Adam(1e-3)),
    ):
        optimizer.build(model.trainable_variables)
        slots = [v for v in optimizer.variables if len(v.shape) > 0]
        assert optimizer_state_bytes(shapes, name) == _nbytes(slots), name
    assert optimizer_state_bytes(shapes, "sgd") == 0


def test_sharding_arithmetic_and_flops():
    base = plan("B/16", batch_size=512, mesh=(8, 2))
    fsdp = plan("B/16", batch_size=512, mesh=(8, 2), strategy="fsdp")
    tensor = plan("B/16", batch_size=512, mesh=(8, 2), strategy="tensor")
    both = plan("B/16", batch_size=512, mesh="8x2", strategy="fsdp+tensor")
    p = base.parameter_bytes
    assert p == 4 * base.num_parameters
    assert fsdp.parameter_bytes == math.ceil(p / 8)
    assert tensor.parameter_bytes == math.ceil(p / 2)
    assert both.parameter_bytes == math.ceil(p / 16)
    assert both.optimizer_bytes == math.ceil(base.optimizer_bytes / 16)
    assert fsdp.activation_bytes == base.activation_bytes  # same batch per device
    assert tensor.activation_bytes < base.activation_bytes
    # Per-device batch halves -> activations halve.
    half = plan("B/16", batch_size=256, mesh=(8, 2))
    assert half.activation_bytes * 2 == pytest.approx(base.activation_bytes, rel=1e-6)
    # bfloat16 activations: half the bytes; remat keeps less.
    assert plan("B/16", batch_size=512, mesh=(8, 2), compute_dtype="bfloat16")\
        .activation_bytes * 2 == pytest.approx(base.activation_bytes, rel=1e-6)  # fmt: skip
    assert plan("B/16", batch_size=512, mesh=(8, 2), remat=True).activation_bytes < (
        base.activation_bytes / 4
    )
    # FLOPs: 3 x forward (with the head) per example; remat adds an encoder forward.
    n, d, m = 196, 768, 3072
    enc = 12 * (2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d) + 2 * n * 768 * d
    assert base.flops_per_step == 512 * 3 * enc
    assert base.flops_per_device_step == base.flops_per_step / 16
    remat = plan("B/16", batch_size=512, remat=True)
    assert remat.flops_per_step == 512 * 4 * enc
    assert base.total_bytes == (
        base.parameter_bytes
        + base.optimizer_bytes
        + base.gradient_bytes
        + base.activation_bytes
    )
    assert base.fits(base.total_bytes) and not base.fits(base.total_bytes - 1)


def test_paper_sizes():
    g = plan("G/14", batch_size=4096, mesh=(256, 1), pool_type="map")
    # The paper: ViT-G/14 has 1843 M parameters without the MAP head (spec §1.1),
    # 1881.1 M with it.
    assert round(g.num_parameters / 1e6, 1) == 1881.1
    # Adafactor: bf16 momentum (2 bytes/parameter) + factored statistics; the
    # optimizer's docstring states 0.505 x the parameter bytes for ViT-G/14.
    assert g.optimizer_bytes / g.parameter_bytes == pytest.approx(0.505, abs=0.001)


def test_cli(capsys):
    result = plan_main(
        ["G/14", "--batch-size", "4096", "--mesh", "256x1", "--dtype", "bfloat16",
         "--remat", "--memory-gib", "16"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "G/14" in out and "total" in out and "fits in 16 GiB" in out
    assert result.mesh == (256, 1) and result.remat


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=10, mesh=(4, 1)), ValueError, "batch_size"),
        (dict(batch_size=8, mesh="4by1"), ValueError, "mesh"),
        (dict(batch_size=8, strategy="zero3"), ValueError, "strategy"),
        (dict(batch_size=8, compute_dtype="int8"), ValueError, "compute_dtype"),
        (dict(batch_size=8, optimizer="lion"), ValueError, "optimizer"),
        (dict(batch_size=8, image_size=100), ValueError, "image_size"),
        (dict(batch_size=8, heads=3), TypeError, "heads"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        plan("B/16", **kwargs)


# Configurations for the compiler check: tokens, width, MLP, heads and depth vary.
XLA_CONFIGS = [
    dict(batch=16, image_size=32, width=32, depth=1, mlp_dim=128, num_heads=2),
    dict(batch=16, image_size=32, width=64, depth=2, mlp_dim=256, num_heads=4),
    dict(batch=8, image_size=48, width=64, depth=2, mlp_dim=192, num_heads=8),
    dict(batch=24, image_size=16, width=96, depth=3, mlp_dim=384, num_heads=4),
]


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="Compares with XLA's memory_analysis() of a jax.jit-compiled train step; "
    "JAX backend only.",
)
@pytest.mark.parametrize(
    "cfg", XLA_CONFIGS, ids=lambda c: "-".join(map(str, c.values()))
)
def test_plan_matches_the_compiled_train_step(cfg):
    memory = _fit_tool().compiled_memory(cfg)  # the measurement the model is fitted to
    cfg = dict(cfg)
    batch, image_size = cfg.pop("batch"), cfg.pop("image_size")
    p = plan(
        "mu/4",
        batch_size=batch,
        image_size=image_size,
        num_classes=10,
        pool_type="map",
        **cfg,
    )
    inputs = 4 * batch * (image_size * image_size * 3 + 10)
    scalars = 8  # the optimizer's int32 iteration and float32 learning rate
    # Parameters and optimizer state: exactly XLA's argument buffers.
    assert memory.argument_size_in_bytes == (
        p.parameter_bytes + p.optimizer_bytes + inputs + scalars
    )
    # Temporaries (gradients + activations kept for the backward pass + the
    # backward's transients): within ACTIVATION_TOLERANCE of the plan.
    planned = p.gradient_bytes + p.activation_bytes
    assert memory.temp_size_in_bytes == pytest.approx(planned, rel=ACTIVATION_TOLERANCE)


def test_the_activation_fit_holds_out_the_compiler_checks():
    assert not [cfg for cfg in XLA_CONFIGS if cfg in _fit_tool().FIT]


def test_the_activation_fit_recovers_known_coefficients():
    tool = _fit_tool()
    features = np.stack([tool.block_bytes(cfg) for cfg in tool.FIT])
    rest = np.random.default_rng(0).uniform(1e4, 1e6, len(tool.FIT))
    temps = features @ np.array([13.0, 2.0, 4.0]) + rest
    np.testing.assert_allclose(tool.fit(features, temps, rest), [13, 2, 4], rtol=1e-9)
