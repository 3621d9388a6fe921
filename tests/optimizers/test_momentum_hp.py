"""MomentumHP (big_vision ``momentum_hp``) against NumPy transcriptions of spec §3.3.

With a bfloat16 (or float16) accumulator the stored momentum must equal, bit for
bit, NumPy's float32 evaluation of ``m~ = g + mu_d * float32(m)`` rounded to the
accumulator dtype: the product of two bfloat16 numbers is exact in float32, so the
only rounding is that of the sum, on every backend. Parameters follow a float64
reference to float32 round-off (1e-6 relative; measured <= 2e-7).
"""

import keras
import ml_dtypes
import numpy as np
import pytest

from keras_scalevit.optimizers import MomentumHP

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

LR, WD, STEPS = 0.1, 0.01, 5


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _problem(seed):
    rng = np.random.default_rng(seed)
    shapes = {"dense/kernel": (24, 40), "dense/bias": (40,)}
    params = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()}
    grads = [
        {k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()}
        for _ in range(STEPS)
    ]
    variables = {}
    for path, value in params.items():
        with keras.name_scope("dense"):
            variables[path] = keras.Variable(value, name=path.split("/")[1])
    return params, grads, variables


@pytest.mark.parametrize(
    "dtype, np_dtype, mu_d",
    [
        ("bfloat16", ml_dtypes.bfloat16, 0.8984375),
        ("float16", np.float16, 0.89990234375),
    ],
)
def test_low_precision_trace_is_exact(dtype, np_dtype, mu_d):
    params, grads, variables = _problem(0)
    optimizer = MomentumHP(LR, momentum=0.9, momentum_dtype=dtype, weight_decay=WD)
    m = {k: np.zeros(v.shape, np_dtype) for k, v in params.items()}
    p = {k: np.float64(v) for k, v in params.items()}
    for g in grads:
        optimizer.apply([g[k] for k in variables], list(variables.values()))
        for k in p:
            m_tilde = g[k] + np.float32(mu_d) * m[k].astype(np.float32)  # float32
            decay = WD * LR if k.endswith("/kernel") else 0.0  # default: kernels only
            p[k] = p[k] - (LR * np.float64(m_tilde) + decay * p[k])
            m[k] = m_tilde.astype(np_dtype)
    for k, variable in variables.items():
        slot = optimizer.variable_state(variable)["momentum"]
        assert slot.dtype == dtype
        np.testing.assert_array_equal(
            _np(keras.ops.cast(slot, "float32")), m[k].astype(np.float32)
        )
        err = np.max(np.abs(_np(variable) - p[k])) / np.max(np.abs(p[k]))
        assert err <= 1e-6, (k, err)


@pytest.mark.parametrize("nesterov", [False, True])
def test_float32_trace_and_nesterov(nesterov):
    params, grads, variables = _problem(1)
    optimizer = MomentumHP(
        LR, momentum=0.9, momentum_dtype="float32", nesterov=nesterov
    )
    m = {k: 0.0 for k in params}
    p = {k: np.float64(v) for k, v in params.items()}
    for g in grads:
        optimizer.apply([g[k] for k in variables], list(variables.values()))
        for k in p:
            m[k] = g[k] + 0.9 * m[k]
            p[k] = p[k] - LR * (g[k] + 0.9 * m[k] if nesterov else m[k])
    for k, variable in variables.items():
        err = np.max(np.abs(_np(variable) - p[k])) / np.max(np.abs(p[k]))
        assert err <= 1e-6, (k, err)


def test_without_momentum_is_sgd():
    # big_vision.sgd: the chain with an identity optimizer.
    params, grads, variables = _problem(2)
    optimizer = MomentumHP(
        LR, momentum=None, weight_decay=WD, weight_decay_multipliers=[(".*", 2.0)]
    )
    p = {k: np.float64(v) for k, v in params.items()}
    for g in grads:
        optimizer.apply([g[k] for k in variables], list(variables.values()))
        p = {k: p[k] - LR * (g[k] + WD * 2.0 * p[k]) for k in p}
    assert optimizer.variable_state(variables["dense/kernel"]) == {}
    for k, variable in variables.items():
        err = np.max(np.abs(_np(variable) - p[k])) / np.max(np.abs(p[k]))
        assert err <= 1e-6, (k, err)
