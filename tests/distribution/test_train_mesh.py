"""`main` under ``config.mesh``: the digits config trained on 8 CPU devices with data
and FSDP parallelism equals one device; a checkpoint resumes exactly under the same
mesh (after an exception, and after SIGKILL at a random step) and restores under
another one.

JAX-only (`keras.distribution`). The device count is fixed when JAX starts, so one
subprocess (``train_mesh_worker.py``, 8 host devices) runs every scenario through
`keras_scalevit.training.main` and leaves each run's workdir; the checks are here,
reading the Orbax checkpoints whole on this process's one device
(`make_checkpointer(workdir).read()`). The SIGKILL test runs the command line.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import (
    BACKEND,
    jax_worker_env,
    run_jax_worker,
    sigkill_at_random_step,
    train_command,
    write_tiny_config,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BACKEND != "jax",
        reason="config.mesh (keras.distribution) is implemented for the JAX backend "
        f"only; this run uses KERAS_BACKEND={BACKEND}.",
    ),
]

WORKER = pathlib.Path(__file__).with_name("train_mesh_worker.py")
LR, STEPS = 3e-3, 4  # the digits config's peak rate; the worker's steps


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_mesh")
    run_jax_worker(WORKER, out, timeout=600)
    return out


def _losses(out, name):
    with open(out / name / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return np.array([r["loss"] for r in records if "loss" in r and "epoch" not in r])


def _weights(out, name, steps=STEPS):
    """The final checkpoint's variables by path: ``{"model:<path>": (array, dtype)}``.

    The optimizer's too (``"optimizer:<path>"``). Every run, on one device or
    under a mesh, wrote Orbax; read whole here, on one device.
    """
    from keras_scalevit.training import OrbaxCheckpointer, make_checkpointer

    ckpt = make_checkpointer(out / name)
    assert isinstance(ckpt, OrbaxCheckpointer), ckpt
    try:
        meta, arrays = ckpt.read()
    finally:
        ckpt.close()
    assert meta["step"] == steps
    return {
        f"{group}:{path}": (arrays[f"{group}/{i}"], dtype)
        for group in ("model", "optimizer")
        for i, (path, _, dtype) in enumerate(meta[group])
    }


def _weight_tolerance(ref):
    # As in test_sharded_training.py: reordered float32 sums can round the stored
    # bfloat16 momentum the other way (one bf16 ulp of the element plus one of the
    # tensor's scale, <= 3 * 2^-8 * max|m|); steps 2..4 each read a stored
    # momentum and move a weight by <= lr * 0.9 * that. Measured max 1.05e-5 for
    # data(8) and fsdp(8) against a bound of 1.5e-4 (max|m| = 1.6).
    max_m = max(
        float(np.abs(a.astype(np.float32)).max())
        for k, (a, _) in ref.items()
        if k.endswith("momentum")
    )
    assert 0 < max_m < 100, max_m
    return (STEPS - 1) * LR * 0.9 * 3 * 2.0**-8 * max_m + 1e-6


def _excluded(path):
    # The key bias has an exactly zero gradient (softmax is invariant to adding
    # q·b_k to every score of a query): its computed gradient is round-off that
    # Adafactor's scale-free g / sqrt(v) turns into an O(lr) step of any sign, on
    # any layout (as in test_sharded_training.py). Not a parallelism property.
    return "key/bias" in path or "key_bias" in path


@pytest.mark.parametrize("name", ["data", "fsdp"])
def test_mesh_training_equals_one_device(out, name):
    single, sharded = _losses(out, "single"), _losses(out, name)
    assert len(single) == STEPS
    # A float32 mean summed in another order (per shard, then across shards):
    # a few ulps of ~2.3; measured 2.1e-7 relative.
    np.testing.assert_allclose(sharded, single, rtol=1e-6, atol=0)
    ref, got = _weights(out, "single"), _weights(out, name)
    assert ref.keys() == got.keys()
    tol = _weight_tolerance(ref)
    compared = 0
    for key, (a, dtype) in ref.items():
        if not key.startswith("model:") or _excluded(key) or dtype != "float32":
            continue
        np.testing.assert_allclose(got[key][0], a, rtol=0, atol=tol, err_msg=key)
        compared += 1
    assert compared > 10


def test_resume_under_the_same_mesh_is_bitwise(out):
    # Interrupted after the step-2 checkpoint under fsdp(8), resumed under fsdp(8):
    # the uninterrupted fsdp run's variables, bit for bit (same compiled program).
    full, resumed = _weights(out, "fsdp"), _weights(out, "resume")
    assert full.keys() == resumed.keys()
    for key, (a, _) in full.items():
        np.testing.assert_array_equal(resumed[key][0], a, err_msg=key)
    np.testing.assert_array_equal(_losses(out, "resume"), _losses(out, "fsdp"))


def test_restore_under_another_mesh(out):
    # The fsdp(8) checkpoint of step 2 resumed under data(8): the variables are
    # resharded on restore and training continues as the data(8) run does (its
    # first two steps equal fsdp's within round-off, see the test above).
    ref, got = _weights(out, "data"), _weights(out, "remesh")
    tol = _weight_tolerance(ref)
    for key, (a, dtype) in ref.items():
        if key.startswith("model:") and not _excluded(key) and dtype == "float32":
            np.testing.assert_allclose(got[key][0], a, rtol=0, atol=tol, err_msg=key)
    np.testing.assert_allclose(
        _losses(out, "remesh"), _losses(out, "data"), rtol=1e-6, atol=0
    )


def test_batch_that_does_not_divide_the_data_axis_is_refused(out):
    message = (out / "bad_batch.txt").read_text()
    assert "`config.input.batch_size`" in message and "60" in message
    assert "8 devices" in message


MULTIHOST_WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_and_resume_from_orbax(out):
    """Two JAX processes (4 CPU devices each, gloo collectives) run the same
    command: `main` joins them with `keras.distribution.initialize`, trains under
    ``data`` on 8 global devices, checkpoints with Orbax (each process its
    shards), is interrupted, resumes, and ends where one 8-device process does."""
    addresses = f"127.0.0.1:{_free_port()}"
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env.pop("XLA_FLAGS", None)
        env.update(
            KERAS_BACKEND="jax",
            PYTHONPATH=os.pathsep.join(
                [str(WORKER.parents[2]), env.get("PYTHONPATH", "")]
            ),
            CUDA_VISIBLE_DEVICES="",
            JAX_PLATFORMS="cpu",
            KERAS_DISTRIBUTION_JOB_ADDRESSES=addresses,
            KERAS_DISTRIBUTION_NUM_PROCESSES="2",
            KERAS_DISTRIBUTION_PROCESS_ID=str(pid),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(MULTIHOST_WORKER), str(out), str(out / "tfds")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:  # the test stops by itself, whatever happened
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    assert "Resumed from" in logs[0] and "at step 2/4" in logs[0], logs[0][-2000:]
    assert (out / "multihost" / "checkpoint" / str(STEPS)).is_dir()
    # Each process fed its half of every global batch (Keras' auto-sharding of
    # the tf.data pipeline): the losses of one process with 8 devices, up to the
    # order of the float32 sums (as above; measured 0 here).
    np.testing.assert_allclose(
        _losses(out, "multihost"), _losses(out, "data"), rtol=1e-6, atol=0
    )
    # fsdp over the two hosts: every kernel is split between the processes, and
    # the exported model.keras holds the weights gathered whole: exactly the
    # run's own checkpoint (a gather moves bits, it does not round).
    import keras

    ckpt = _weights(out, "multihost_fsdp")
    model = keras.saving.load_model(out / "multihost_fsdp" / "model.keras")
    by_path = {v.path: keras.ops.convert_to_numpy(v.value) for v in model.weights}
    compared = 0
    for key, (a, _) in ckpt.items():
        if key.startswith("model:"):
            np.testing.assert_array_equal(by_path[key[len("model:") :]], a, key)
            compared += 1
    assert compared == len(by_path) > 10
    assert (out / "multihost_fsdp" / "preset" / "config.json").is_file()
    # And it trained as one 8-device fsdp process does (round-off, as above).
    np.testing.assert_allclose(
        _losses(out, "multihost_fsdp"), _losses(out, "fsdp"), rtol=1e-6, atol=0
    )


def test_sigkill_under_fsdp_and_rerun_is_bitwise(tmp_path):
    """The tiny digits run on the command line under fsdp (8 devices), SIGKILLed at
    a random step (seed printed; ``SCALEVIT_KILL_SEED`` replays it) and rerun with
    the same command, ends with the uninterrupted run's weights and optimizer
    state, bit for bit."""
    total = 40
    config_path = write_tiny_config(
        tmp_path / "tiny_config.py", tmp_path / "tfds", extra=["c.evals = None"]
    )
    flags = ("--config.mesh.strategy=fsdp", "--config.mesh.shape=8,1")
    env = jax_worker_env(8)
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(
        train_command(config_path, full, total, *flags), env=env, check=True,
        capture_output=True, timeout=600,
    )  # fmt: skip
    command = train_command(config_path, killed, total, *flags)
    # From step 21 on, a committed step (10 or later) is there to resume from.
    info = sigkill_at_random_step(command, env, killed, kill_between=(21, 36))

    from keras_scalevit.training import make_checkpointer

    ckpt = make_checkpointer(killed)
    ckpt_step = ckpt.metadata()["step"]
    ckpt.close()
    assert 10 <= ckpt_step <= info["killed_at"] < total, (ckpt_step, info)
    rerun = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"at step {ckpt_step}/{total}" in rerun.stdout, rerun.stdout[-2000:]
    print(f"killed at step {info['killed_at']}, resumed from {ckpt_step}")

    ref, got = _weights(tmp_path, "full", total), _weights(tmp_path, "killed", total)
    assert ref.keys() == got.keys()
    assert any(k.startswith("optimizer:") for k in ref)
    for key, (a, _) in ref.items():
        np.testing.assert_array_equal(got[key][0], a, err_msg=key)
    np.testing.assert_array_equal(
        _losses(tmp_path, "killed"), _losses(tmp_path, "full")
    )
