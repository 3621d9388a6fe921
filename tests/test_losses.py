"""Losses against big_vision's ``misc/losses.npz`` and a float64 NumPy reference.

Tolerance 1e-6 relative: a 6-class sum of float32 log-sigmoids (or
log-softmax terms) lands within a few ulps of big_vision's (measured <= 1.1e-7).
"""

import keras
import numpy as np
import pytest
from conftest import load_fixture, rel_err

from keras_scalevit import losses

FIXTURE = "misc/losses.npz"
KINDS = ("onehot", "multihot", "soft")
FUNCS = {"sigmoid": losses.sigmoid_xent, "softmax": losses.softmax_xent}
CLASSES = {"sigmoid": losses.SigmoidXent, "softmax": losses.SoftmaxXent}


@pytest.fixture(scope="module")
def fx():
    return load_fixture(FIXTURE)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _ref_sigmoid_xent(y, z):
    # -[y log s(z) + (1-y) log s(-z)] = y softplus(-z) + (1-y) softplus(z)
    y, z = np.float64(y), np.float64(z)
    return np.sum(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z), -1)


def _ref_softmax_xent(y, z):
    y, z = np.float64(y), np.float64(z)
    log_softmax = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    return -np.sum(y * log_softmax, -1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss", sorted(FUNCS))
def test_matches_big_vision(fx, loss, kind):
    y, z = fx[f"labels_{kind}"], fx["logits"]
    per_example = _np(FUNCS[loss](y, z))
    assert per_example.shape == (4,) and per_example.dtype == np.float32
    assert rel_err(per_example, fx[f"{loss}_xent_per_example/{kind}"]) <= 1e-6
    mean = _np(CLASSES[loss]()(y, z))
    assert rel_err(mean, fx[f"{loss}_xent_mean/{kind}"]) <= 1e-6


@pytest.mark.parametrize("loss", sorted(FUNCS))
def test_stable_for_large_logits(loss):
    z = np.array([[1e4, -1e4, 80.0, -80.0], [30.0, -30.0, 0.0, 1e-3]], np.float32)
    y = np.array([[0.0, 1.0, 0.3, 0.7], [1.0, 0.0, 0.5, 0.5]], np.float32)
    ref = {"sigmoid": _ref_sigmoid_xent, "softmax": _ref_softmax_xent}[loss](y, z)
    out = _np(FUNCS[loss](y, z))
    assert np.all(np.isfinite(out))
    assert rel_err(out, ref) <= 1e-6


def test_leading_axes_are_kept():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 5)).astype(np.float32)
    y = rng.uniform(size=(2, 3, 5)).astype(np.float32)
    assert rel_err(_np(losses.sigmoid_xent(y, z)), _ref_sigmoid_xent(y, z)) <= 1e-6
    assert rel_err(_np(losses.softmax_xent(y, z)), _ref_softmax_xent(y, z)) <= 1e-6


@pytest.mark.parametrize("cls", [losses.SigmoidXent, losses.SoftmaxXent])
def test_loss_classes_serialize(cls):
    loss = cls(name="my_loss")
    config = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is cls and restored.name == "my_loss"
    assert restored.get_config() == loss.get_config()


def test_bfloat16_logits_are_upcast(fx):
    y, z = fx["labels_soft"], fx["logits"]
    z_bf16 = keras.ops.cast(z, "bfloat16")
    out = _np(losses.SigmoidXent()(y, z_bf16))
    ref = _ref_sigmoid_xent(y, _np(keras.ops.cast(z_bf16, "float32"))).mean()
    assert out.dtype == np.float32 and rel_err(out, ref) <= 1e-6


def test_get_and_compile():
    assert isinstance(losses.get("sigmoid_xent"), losses.SigmoidXent)
    assert isinstance(losses.get("softmax_xent"), losses.SoftmaxXent)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss=losses.get("sigmoid_xent"))
    x = np.ones((8, 3), np.float32)
    y = np.eye(4, dtype=np.float32)[np.arange(8) % 4]
    z = _np(model(x))
    loss = model.evaluate(x, y, batch_size=8, verbose=0)
    assert rel_err(loss, _ref_sigmoid_xent(y, z).mean()) <= 1e-6
