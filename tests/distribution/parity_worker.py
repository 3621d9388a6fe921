"""Trains a small ViT 3 steps on one device and under each strategy (run by a test).

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax python
tests/distribution/parity_worker.py OUT_DIR``: the device count is fixed when JAX
starts, so this runs in its own process. It writes ``OUT_DIR/arrays.npz`` (losses,
initial and final weights, optimizer state per scenario) and ``OUT_DIR/shards.json``
(the sharding of every array as read back from JAX); the test compares them.
"""

import json
import os
import sys

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras

import keras_scalevit
from keras_scalevit.distribution import make_distribution

SCENARIOS = {
    "data": dict(strategy="data", mesh_shape=(8, 1)),
    "fsdp": dict(strategy="fsdp", mesh_shape=(8, 1)),
    "tensor": dict(strategy="tensor", mesh_shape=(2, 4)),
    "fsdp+tensor": dict(strategy="fsdp+tensor", mesh_shape=(4, 2)),
}
BATCH, STEPS, CLASSES = 16, 3, 16


def build_model():
    # Width 256, 4 heads, MLP 512, 16 classes: every sharded size divides 8, 4
    # and 2. Wide enough that the replicated (heads, head_dim) attention biases
    # stay < 1% of the rank >= 2 bytes, as in real ViTs (G/14: 0.03%).
    backbone = keras_scalevit.models.ViTBackbone(
        image_size=16, patch_size=4, width=256, depth=2, num_heads=4, mlp_dim=512
    )
    return keras_scalevit.models.ViTClassifier(
        backbone, CLASSES, pool_type="map", head_zeroinit=False, head_bias_init=-2.0
    )


def build_optimizer():
    # The paper's Adafactor: bf16 momentum, factored second moment, beta2 cap,
    # decoupled weight decay with a head multiplier, global-norm clipping.
    return keras_scalevit.optimizers.Adafactor(
        1e-2,
        weight_decay=0.03,
        weight_decay_multipliers=[(".*head/kernel", 100.0), (".*/kernel", 1.0)],
        global_clipnorm=1.0,
    )


def spec_of(array):
    spec = getattr(array.sharding, "spec", None)
    if spec is None:
        return [None] * array.ndim
    spec = list(spec) + [None] * (array.ndim - len(spec))
    return [None if s is None else str(s) for s in spec]


def per_device_nbytes(array):
    out = {}
    for shard in array.addressable_shards:
        out[str(shard.device.id)] = out.get(str(shard.device.id), 0) + int(
            shard.data.nbytes
        )
    return out


def run(name, init_weights, x, y, arrays, shards):
    model = build_model()
    if init_weights is None:
        init_weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
        for w, v in zip(model.weights, init_weights, strict=True):
            arrays[f"init/w/{w.path}"] = v
    else:
        model.set_weights(init_weights)
    optimizer = build_optimizer()
    model.compile(optimizer=optimizer, loss=keras_scalevit.losses.SigmoidXent())
    losses = []
    for step in range(STEPS):
        sl = slice(step * BATCH, (step + 1) * BATCH)
        losses.append(float(model.train_on_batch(x[sl], y[sl])))
    arrays[f"{name}/loss"] = np.asarray(losses, "float64")
    info = {"variables": {}, "state": {}}
    for w in model.weights:
        arrays[f"{name}/w/{w.path}"] = keras.ops.convert_to_numpy(w)
        info["variables"][w.path] = {
            "shape": list(w.shape),
            "spec": spec_of(w.value),
            "bytes": per_device_nbytes(w.value),
        }
    for w in model.trainable_variables:
        for slot, v in optimizer.variable_state(w).items():
            arrays[f"{name}/s/{w.path}/{slot}"] = keras.ops.convert_to_numpy(v).astype(
                "float32"
            )
            info["state"][f"{w.path}/{slot}"] = {
                "variable": w.path,
                "slot": slot,
                "shape": list(v.shape),
                "dtype": str(v.dtype),
                "spec": spec_of(v.value),
                "bytes": per_device_nbytes(v.value),
            }
    shards[name] = info
    return init_weights


def main(out_dir):
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (BATCH * STEPS, 16, 16, 3)).astype("float32")
    y = (rng.uniform(size=(BATCH * STEPS, CLASSES)) < 0.2).astype("float32")
    arrays, shards = {}, {}
    keras.utils.set_random_seed(0)
    init = run("single", None, x, y, arrays, shards)
    for name, kw in SCENARIOS.items():
        distribution = make_distribution(**kw, model=build_model)
        with distribution.scope():
            run(name, init, x, y, arrays, shards)
    np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
    with open(os.path.join(out_dir, "shards.json"), "w") as f:
        json.dump(shards, f)


if __name__ == "__main__":
    main(sys.argv[1])
