"""Bad optimizer arguments fail early with errors naming the argument and the value."""

import keras
import numpy as np
import pytest

from keras_scalevit.optimizers import Adafactor, MomentumHP, from_big_vision_config

OPTIMIZERS = [Adafactor, MomentumHP]


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_invalid_regex(cls):
    with pytest.raises(
        ValueError, match=r"'\.\*\(head/kernel'.*weight_decay_multipliers.*regular"
    ):
        cls(
            1e-3,
            weight_decay=0.03,
            weight_decay_multipliers=[(".*(head/kernel", 100.0)],
        )
    with pytest.raises(
        ValueError, match=r"learning_rate_multipliers.*not a valid regular"
    ):
        cls(1e-3, learning_rate_multipliers=[("[head", 2.0)])
    with pytest.raises(ValueError, match=r"schedule.*not a valid regular"):
        cls(1e-3, schedule=[("*", {})], schedule_kwargs={"total_steps": 10})


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_negative_multipliers(cls):
    with pytest.raises(ValueError, match=r"weight_decay_multipliers.*>= 0.*-1\.0"):
        cls(1e-3, weight_decay=0.03, weight_decay_multipliers=[(".*/kernel", -1.0)])
    with pytest.raises(ValueError, match=r"learning_rate_multipliers.*> 0.*-0\.5"):
        cls(1e-3, learning_rate_multipliers=[("head/.*", -0.5)])
    with pytest.raises(ValueError, match=r"learning_rate_multipliers.*None schedule"):
        cls(1e-3, learning_rate_multipliers=[("head/.*", 0.0)])
    with pytest.raises(ValueError, match=r"weight_decay.*>= 0.*-0\.1"):
        cls(1e-3, weight_decay=-0.1)


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("dtype", ["int8", "int32", "bool", "string"])
def test_non_float_momentum_dtype(cls, dtype):
    with pytest.raises(ValueError, match=rf"momentum_dtype.*floating-point.*'{dtype}'"):
        cls(1e-3, momentum_dtype=dtype)


def test_pattern_with_leading_slash():
    with pytest.raises(ValueError, match=r"'/head/kernel'.*starts with '/'"):
        Adafactor(
            1e-3, weight_decay=0.1, weight_decay_multipliers=[("/head/kernel", 1.0)]
        )


def test_multiplier_not_a_pair():
    with pytest.raises(
        TypeError, match=r"weight_decay_multipliers.*\(pattern, value\)"
    ):
        Adafactor(1e-3, weight_decay=0.1, weight_decay_multipliers=[".*/kernel"])


def test_schedule_must_cover_every_variable():
    with keras.name_scope("head"):
        kernel = keras.Variable(np.zeros((4, 2), "float32"), name="kernel")
    with keras.name_scope("body"):
        bias = keras.Variable(np.zeros((2,), "float32"), name="bias")
    optimizer = Adafactor(
        1e-3, schedule=[("head/.*", {})], schedule_kwargs={"total_steps": 5}
    )
    with pytest.raises(ValueError, match=r"unmatched: \['body/bias'\]"):
        optimizer.build([kernel, bias])


def test_schedule_dict_errors():
    with pytest.raises(ValueError, match="'mult'.*not 'base'"):
        Adafactor(1e-3, schedule={"base": 2.0}, schedule_kwargs={"total_steps": 5})
    with pytest.raises(ValueError, match="schedule_kwargs.*total_steps"):
        Adafactor(1e-3, schedule={"decay_type": "cosine"})
    with pytest.raises(ValueError, match="decay_type.*'exp'"):
        Adafactor(
            1e-3, schedule={"decay_type": "exp"}, schedule_kwargs={"total_steps": 5}
        )
    with pytest.raises(ValueError, match="warmup_steps"):
        MomentumHP(
            1e-3, schedule={"warmup_steps": 5}, schedule_kwargs={"total_steps": 5}
        )
    with pytest.raises(TypeError, match="Schedule entries"):
        Adafactor(1e-3, schedule=[(".*", 0.5)])


def test_adafactor_hyperparameters():
    with pytest.raises(
        ValueError, match=r"`momentum` must be .*>= 0 and < 1, got 1\.5"
    ):
        Adafactor(1e-3, momentum=1.5)
    with pytest.raises(ValueError, match=r"beta2_cap.*1\.2"):
        Adafactor(1e-3, beta2_cap=1.2)
    with pytest.raises(ValueError, match=r"min_dim_size_to_factor.*0"):
        Adafactor(1e-3, min_dim_size_to_factor=0)
    with pytest.raises(ValueError, match=r"clipping_threshold.*-1"):
        Adafactor(1e-3, clipping_threshold=-1.0)
    with pytest.raises(TypeError, match=r"decay_offset.*'5'"):
        Adafactor(1e-3, decay_offset="5")


def test_big_vision_config_errors():
    with pytest.raises(ValueError, match=r"optax_name.*'scale_by_adam'"):
        from_big_vision_config(
            {"optax_name": "scale_by_adam", "lr": 1e-3}, total_steps=10
        )
    with pytest.raises(ValueError, match=r"optax.*'beta1'"):
        from_big_vision_config(
            {
                "optax_name": "big_vision.scale_by_adafactor",
                "lr": 1e-3,
                "optax": {"beta1": 0.9},
            },
            total_steps=10,
        )
    with pytest.raises(ValueError, match=r"wd=0\.1.*lr=0"):
        from_big_vision_config(
            {"optax_name": "big_vision.momentum_hp", "lr": 0.0, "wd": 0.1},
            total_steps=10,
        )
