"""Adafactor and MomentumHP through keras serialization and a compiled ``.keras`` model.

A reloaded model's optimizer must hold the same state (bfloat16 momentum, factored
statistics, iteration count) and continue bit for bit like the original.
"""

import json

import keras
import numpy as np
import pytest

from keras_scalevit.optimizers import Adafactor, MomentumHP
from keras_scalevit.schedules import create_learning_rate_schedule

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _optimizer(kind):
    common = dict(
        weight_decay=0.03,
        weight_decay_multipliers=[(".*head/kernel", 100.0), (".*/kernel", 1.0)],
        learning_rate_multipliers=[("hidden/bias", 0.5)],
        schedule=[
            ("embed/.*", None),
            ("head/.*", {"decay_type": "cosine", "warmup_steps": 2, "mult": 2.0}),
            (".*", {"decay_type": "rsqrt", "timescale": 5, "warmup_steps": 2}),
        ],
        schedule_kwargs={"total_steps": 20},
        global_clipnorm=1.0,
    )
    if kind == "adafactor":
        return Adafactor(0.01, clipping_threshold=1.0, decay_rate=0.7, **common)
    return MomentumHP(0.01, nesterov=True, **common)


def _model():
    inputs = keras.Input((12,))
    x = keras.layers.Dense(40, name="embed")(inputs)
    x = keras.layers.Dense(48, activation="tanh", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


@pytest.mark.parametrize("kind", ["adafactor", "momentum_hp"])
def test_serialize_deserialize(kind):
    optimizer = _optimizer(kind)
    config = json.loads(json.dumps(keras.optimizers.serialize(optimizer)))
    clone = keras.optimizers.deserialize(config)
    assert type(clone) is type(optimizer)
    assert clone.get_config() == optimizer.get_config()
    steps = keras.ops.convert_to_tensor(np.arange(20, dtype=np.int32))
    for (p1, s1), (p2, s2) in zip(optimizer.schedule, clone.schedule, strict=True):
        assert p1 == p2 and (s1 is None) == (s2 is None)
        if s1 is not None:
            np.testing.assert_array_equal(_np(s1(steps)), _np(s2(steps)))
    # A schedule passed as the learning rate round-trips too.
    scheduled = Adafactor(
        create_learning_rate_schedule(100, base=1e-3, decay_type="rsqrt")
    )
    again = keras.optimizers.deserialize(keras.optimizers.serialize(scheduled))
    assert again.get_config() == scheduled.get_config()


@pytest.mark.parametrize("kind", ["adafactor", "momentum_hp"])
def test_keras_file_round_trip_continues_identically(kind, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    keras.utils.set_random_seed(1)
    model = _model()
    frozen_init = _np(model.get_layer("embed").kernel)
    model.compile(optimizer=_optimizer(kind), loss="mse")
    for _ in range(3):
        model.train_on_batch(x, y)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)

    opt, opt2 = model.optimizer, reloaded.optimizer
    assert type(opt2) is type(opt) and opt2.get_config() == opt.get_config()
    assert int(_np(opt2.iterations)) == 3
    assert len(opt2.variables) == len(opt.variables)
    for a, b in zip(opt.variables, opt2.variables, strict=True):
        assert a.path == b.path and a.dtype == b.dtype
        np.testing.assert_array_equal(
            _np(keras.ops.cast(a, "float32")), _np(keras.ops.cast(b, "float32"))
        )
    state = opt2.variable_state(reloaded.get_layer("hidden").kernel)
    assert state["momentum"].dtype == "bfloat16"
    assert not opt2.variable_state(reloaded.get_layer("embed").kernel)  # frozen

    for _ in range(2):
        model.train_on_batch(x, y)
        reloaded.train_on_batch(x, y)
    for a, b in zip(model.weights, reloaded.weights, strict=True):
        np.testing.assert_array_equal(_np(a), _np(b))
    for a, b in zip(opt.variables, opt2.variables, strict=True):
        np.testing.assert_array_equal(
            _np(keras.ops.cast(a, "float32")), _np(keras.ops.cast(b, "float32"))
        )
    # The frozen layer never moved.
    np.testing.assert_array_equal(_np(reloaded.get_layer("embed").kernel), frozen_init)
