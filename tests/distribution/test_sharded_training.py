"""Three training steps under data, FSDP, tensor and FSDP+tensor parallelism on 8
CPU devices equal one device; FSDP holds 1/8 of the kernels and their state.

JAX-only (`keras.distribution`). The device count is fixed when JAX starts, so one
subprocess (``parity_worker.py`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``) runs every scenario and
writes the arrays and their shardings as read back from JAX; the checks are here.
"""

import json
import pathlib

import numpy as np
import pytest

from tests.conftest import BACKEND, run_jax_worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BACKEND != "jax",
        reason="keras.distribution (sharded training) is implemented for the JAX "
        f"backend only; this run uses KERAS_BACKEND={BACKEND}.",
    ),
]

WORKER = pathlib.Path(__file__).with_name("parity_worker.py")
SCENARIOS = ("data", "fsdp", "tensor", "fsdp+tensor")
LEARNING_RATE = 1e-2  # the worker's
DEVICES = 8


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    run_jax_worker(WORKER, out, devices=DEVICES, timeout=900)
    arrays = np.load(out / "arrays.npz", allow_pickle=False)
    with open(out / "shards.json") as f:
        shards = json.load(f)
    return arrays, shards


def _excluded(path):
    # The key bias has an exactly zero gradient (softmax is invariant to adding
    # q·b_k to every score of a query), so its computed gradient is pure round-off
    # (~1e-9) and Adafactor's scale-free g / sqrt(v) turns that noise into an O(lr)
    # step of arbitrary sign on any device layout. Not a parallelism property.
    return path.endswith("/key/bias")


def _params(arrays, name):
    prefix = f"{name}/w/"
    return {k[len(prefix) :]: arrays[k] for k in arrays.files if k.startswith(prefix)}


def _state(arrays, name):
    prefix = f"{name}/s/"
    return {k[len(prefix) :]: arrays[k] for k in arrays.files if k.startswith(prefix)}


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_loss_and_weights_as_one_device(results, name):
    arrays, _ = results
    # Loss: a float32 mean whose terms are summed in another order (per shard, then
    # across shards); measured 2.0e-7 relative (2 ulps), bound ~9 ulps.
    np.testing.assert_allclose(
        arrays[f"{name}/loss"], arrays["single/loss"], rtol=1e-6, atol=0
    )
    single_state = _state(arrays, "single")
    max_momentum = max(
        float(np.abs(v).max())
        for k, v in single_state.items()
        if k.endswith("momentum")
    )
    # Weights: reordered float32 sums change the float32 EMA of the momentum in its
    # last bits, which can round the stored bfloat16 momentum the other way: one
    # bf16 ulp of the element plus one of the tensor's scale (see the state test),
    # <= 3 * 2^-8 * max|m|. Steps 2 and 3 read a stored momentum, each moving a
    # weight by <= lr * 0.9 * that. Measured max 3.5e-5 with lr 1e-2 (bound 1.2e-4),
    # while every tensor moved by ~1e-2: a layout that changed the math (a missing
    # reduction across shards) would be off by O(lr).
    tol = 2 * LEARNING_RATE * 0.9 * 3 * 2.0**-8 * max_momentum + 1e-6
    single = _params(arrays, "single")
    init = _params(arrays, "init")
    for path, value in _params(arrays, name).items():
        if _excluded(path):
            continue
        assert np.abs(single[path] - init[path]).max() > 20 * tol, path
        np.testing.assert_allclose(value, single[path], rtol=0, atol=tol, err_msg=path)


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_optimizer_state_as_one_device(results, name):
    arrays, _ = results
    single = _state(arrays, "single")
    for key, value in _state(arrays, name).items():
        if _excluded(key.rsplit("/", 1)[0]):
            continue
        ref = single[key]
        if key.endswith("momentum"):
            # One bfloat16 ulp of the element (<= 2^-7 of it) where the float32
            # EMA straddles a rounding boundary, plus one bf16 ulp of the tensor's
            # scale: Adafactor's u = g / sqrt(v) carries float32 errors relative to
            # the row/column RMS, not to the element, so small elements differ by
            # up to that much (measured 2.4e-3 of max|m| beyond the first term).
            atol = 2.0**-7 * np.abs(ref) + 2.0**-8 * np.abs(ref).max()
            assert np.all(np.abs(value - ref) <= atol), key
        else:
            # float32 second moments of gradients summed per shard (and of step 3's
            # gradients at weights that differ as above): measured <= 5.2e-6 of the
            # largest entry; bound 2e-5.
            np.testing.assert_allclose(
                value, ref, rtol=0, atol=2e-5 * np.abs(ref).max(), err_msg=key
            )


def _reduced(spec, axis):
    return [a for i, a in enumerate(spec) if i != axis]


def _factored_axes(shape):
    # optax's rule, written out: the largest axis (the later on ties) and the
    # second largest; factored when the second largest is >= 32.
    order = sorted(range(len(shape)), key=lambda i: (shape[i], i))
    if len(shape) < 2 or shape[order[-2]] < 32:
        return None
    return order[-2], order[-1]


@pytest.mark.parametrize("name", SCENARIOS)
def test_optimizer_state_follows_its_variable(results, name):
    _, shards = results
    info = shards[name]
    seen = set()
    for state in info["state"].values():
        var = info["variables"][state["variable"]]
        spec, slot = var["spec"], state["slot"]
        axes = _factored_axes(var["shape"])
        if slot in ("momentum", "v"):
            expected = spec
        elif slot == "v_row":
            expected = _reduced(spec, axes[1])
        else:  # v_col
            expected = _reduced(spec, axes[0])
        assert state["spec"] == expected, (state, var)
        if slot == "momentum":
            assert state["dtype"] == "bfloat16"
        seen.add(slot)
    assert seen == {"momentum", "v", "v_row", "v_col"}


# What the layouts put where, written out for a few variables (None: whole).
EXPECTED_SPECS = {
    # (8, 1) mesh: the model axis is there, of size 1.
    "fsdp": {
        "embedding/kernel": [None, None, None, "batch"],
        "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel": [
            "batch", "model", None,
        ],
        "Transformer/encoderblock_1/MlpBlock_0/Dense_1/kernel": ["model", "batch"],
        "head/kernel": ["batch", "model"],
        "Transformer/encoderblock_1/LayerNorm_0/scale": [None],
    },
    "tensor": {
        "embedding/kernel": [None, None, None, None],
        "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel": [
            None, "model", None,
        ],
        "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/out/kernel": [
            "model", None, None,
        ],
        "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel": [None, "model"],
        "Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias": ["model"],
        "MAPHead_0/MlpBlock_0/Dense_1/kernel": ["model", None],
        "head/kernel": [None, "model"],
        "head/bias": ["model"],
    },
    "fsdp+tensor": {
        "pos_embedding/pos_embedding": [None, None, "batch"],
        "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/kernel": [
            "model", None, "batch",
        ],
        "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel": ["batch", "model"],
        "head/kernel": ["batch", "model"],
        "MAPHead_0/probe": [None, None, "batch"],
    },
}  # fmt: skip


@pytest.mark.parametrize("name", SCENARIOS)
def test_variables_are_laid_out(results, name):
    _, shards = results
    variables = shards[name]["variables"]
    if name == "data":
        assert all(set(v["spec"]) == {None} for v in variables.values())
        return
    for path, spec in EXPECTED_SPECS[name].items():
        assert variables[path]["spec"] == spec, path


def test_fsdp_holds_an_eighth_of_kernels_and_their_state(results):
    _, shards = results
    info = shards["fsdp"]
    itemsize = {"float32": 4, "bfloat16": 2}
    entries = []
    for v in info["variables"].values():
        if len(v["shape"]) >= 2:
            entries.append((v["shape"], 4, v["bytes"]))
    for s in info["state"].values():
        rank = len(info["variables"][s["variable"]]["shape"])
        if rank >= 2 and len(s["shape"]) == rank:
            entries.append((s["shape"], itemsize[s["dtype"]], s["bytes"]))
    total = sum(int(np.prod(shape)) * size for shape, size, _ in entries)
    per_device = [sum(b.get(str(d), 0) for _, _, b in entries) for d in range(DEVICES)]
    assert max(per_device) <= 1.02 * total / DEVICES, (per_device, total)
    # The same arrays replicated (data parallel) hold everything on every device.
    data = shards["data"]
    replicated = sum(
        v["bytes"]["0"] for v in data["variables"].values() if len(v["shape"]) >= 2
    )
    assert replicated == sum(
        int(np.prod(v["shape"])) * 4
        for v in data["variables"].values()
        if len(v["shape"]) >= 2
    )
