"""Training-time features: remat gives the same gradients; mixed_bfloat16.

Gradients are read back backend-agnostically from one ``model.fit`` step with plain
SGD: ``g = (w_before - w_after) / lr``. With ``lr = 1e4`` the step dwarfs the
weights, so the subtraction loses only ~``|w| / (lr·|g|)`` ulps and the recovered
gradient is float32-exact to ~1e-7 relative.
"""

import keras
import numpy as np
import pytest
from conftest import BV_FIXTURES, load_fixture, rel_err

from keras_scalevit.convert import from_big_vision, to_big_vision
from keras_scalevit.models import ViTClassifier

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

LR = 1e4
# remat recomputes the same float32 forward; XLA/TF/torch may fuse or order the
# backward differently, so gradients agree to float32 round-off: 1e-5 relative to
# each variable's largest gradient (>10x margin over what is measured).
GRAD_TOL = 1e-5


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _data(n=4, size=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, size, size, 3)).astype("float32")
    y = rng.normal(size=(n, classes)).astype("float32")
    return x, y


def _one_step_grads(model, x, y):
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR), loss="mse")
    before = {v.path: _np(v).astype(np.float64) for v in model.trainable_weights}
    hist = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    after = {v.path: _np(v).astype(np.float64) for v in model.trainable_weights}
    grads = {k: (before[k] - after[k]) / LR for k in before}
    return grads, hist.history["loss"][0]


def _pair(remat_kwargs, **kwargs):
    keras.utils.set_random_seed(3)
    plain = ViTClassifier.from_variant(
        "mu/8", num_classes=3, image_size=16, head_zeroinit=False, **kwargs
    )
    # Same global seed before each build: same init and same dropout seed
    # generators (their states are not part of get_weights()).
    keras.utils.set_random_seed(3)
    remat = ViTClassifier.from_variant(
        "mu/8",
        num_classes=3,
        image_size=16,
        head_zeroinit=False,
        **remat_kwargs,
        **kwargs,
    )
    remat.set_weights(plain.get_weights())
    return plain, remat


@pytest.mark.parametrize("pool_type", ["map", "tok"])
def test_remat_gradients_equal(pool_type):
    plain, remat = _pair(dict(remat=True), pool_type=pool_type, depth=2)
    assert all(b.remat for b in remat.backbone.blocks)
    assert not any(b.remat for b in plain.backbone.blocks)
    x, y = _data()
    g_plain, loss_plain = _one_step_grads(plain, x, y)
    g_remat, loss_remat = _one_step_grads(remat, x, y)
    assert np.isclose(loss_plain, loss_remat, rtol=1e-6)
    assert sorted(g_plain) == sorted(g_remat)
    scale = max(np.abs(g).max() for g in g_plain.values())
    for k in g_plain:
        if k.endswith("/key/bias"):
            # Softmax is invariant to a per-query shift of the scores, so the key
            # bias has a zero gradient; both runs must show only round-off.
            assert np.abs(g_plain[k]).max() <= 1e-5 * scale, k
            assert np.abs(g_remat[k]).max() <= 1e-5 * scale, k
            continue
        # Every other variable gets a real gradient (the head is not zero-init).
        assert np.abs(g_plain[k]).max() > 1e-6 * scale, k
        assert rel_err(g_remat[k], g_plain[k]) <= GRAD_TOL, k


def test_remat_with_dropout_trains():
    plain, remat = _pair(dict(remat=True), pool_type="map", dropout=0.1)
    x, y = _data()
    g, loss = _one_step_grads(remat, x, y)
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(v)) for v in g.values())
    assert any(np.abs(v).max() > 0 for v in g.values())
    # still deterministic at inference: dropout off, same as the float32 twin
    plain.set_weights(remat.get_weights())
    assert np.array_equal(_np(remat(x)), _np(plain(x)))


def test_dropout_masks_identical_with_remat():
    """Same seed, same dropout masks: remat changes memory, not the update."""
    plain, remat = _pair(dict(remat=True), pool_type="gap", dropout=0.2)
    x, y = _data()
    # Reseed before each step too: torch's dropout also reads global RNG state.
    keras.utils.set_random_seed(9)
    g_plain, _ = _one_step_grads(plain, x, y)
    keras.utils.set_random_seed(9)
    g_remat, _ = _one_step_grads(remat, x, y)
    # the masks were really applied: without dropout the step differs
    _, no_drop = _pair(dict(dropout=0.0), pool_type="gap")
    g_none, _ = _one_step_grads(no_drop, x, y)
    assert rel_err(g_none["head/kernel"], g_plain["head/kernel"]) > 1e-2
    scale = max(np.abs(g).max() for g in g_plain.values())
    for k in g_plain:
        if k.endswith("/key/bias"):  # zero gradient, see above
            assert np.abs(g_remat[k]).max() <= 1e-5 * scale, k
            continue
        assert rel_err(g_remat[k], g_plain[k]) <= GRAD_TOL, k


def test_mixed_bfloat16_against_big_vision():
    """mixed_bfloat16 model on the mu/8 fixture: float32 outputs close to big_vision.

    bfloat16 keeps 8 significant bits (unit round-off 2^-9 ~ 2e-3); the stem,
    attention and MLP matmuls and the residual stream each round once, so errors of a
    few 1e-3 of the output scale are expected; 2e-2 bounds that without admitting a
    wrong model (the float32 model is at ~1e-6 and any structural error is O(1)).
    """
    name = "models/vit_variant_mu8_map.npz"
    data = load_fixture(name)
    model = from_big_vision(BV_FIXTURES / name, dtype="mixed_bfloat16")
    assert model.backbone.blocks[0].compute_dtype == "bfloat16"
    assert model.backbone.blocks[0].variable_dtype == "float32"
    assert model.head.compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in model.weights)
    logits = model(data["inputs/images"])
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    err = rel_err(_np(logits), data["outputs/logits"])
    assert 0 < err <= 2e-2, err  # > 0: the matmuls really ran in bfloat16
    rep = model.representation_model(data["inputs/images"])
    assert keras.backend.standardize_dtype(rep.dtype) == "float32"
    assert rel_err(_np(rep), data["outputs/pre_logits"]) <= 2e-2
    # The float32 weights are untouched by the policy.
    ref = load_fixture(name)
    params = to_big_vision(model)
    assert np.array_equal(params["head/kernel"], ref["params/head/kernel"])


def test_mixed_bfloat16_trains():
    keras.utils.set_random_seed(4)
    model = ViTClassifier.from_variant(
        "mu/8",
        num_classes=3,
        image_size=16,
        head_zeroinit=False,
        dtype="mixed_bfloat16",
        remat=True,
    )
    x, y = _data()
    g, loss = _one_step_grads(model, x, y)
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(v)) for v in g.values())
    assert all(v.dtype == "float32" for v in model.trainable_weights)
