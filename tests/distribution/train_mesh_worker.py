"""Runs `keras_scalevit.training.main` on the digits config under several meshes.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax python
tests/distribution/train_mesh_worker.py OUT_DIR`` (the device count is fixed when
JAX starts, so the scenarios share this one process). For each scenario it writes
``OUT_DIR/<name>/`` (the run's workdir: metrics.jsonl, the Orbax checkpoint); the
test reads them back.
"""

import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

from keras_scalevit.configs import digits
from keras_scalevit.training import TrainLoop, main

STEPS, INTERRUPT_AT = 4, 2


class Interrupted(Exception):
    pass


def config(data_dir, strategy=None, shape=None):
    c = digits.get_config()
    c.input.data.data_dir = data_dir
    c.total_steps = STEPS
    c.ckpt_steps = INTERRUPT_AT
    c.log_training_steps = 1
    c.verbose = 0
    c.evals = None
    c.mesh.strategy = strategy
    c.mesh.shape = shape
    return c


def run(out, name, data_dir, strategy=None, shape=None, interrupt=False):
    t = time.time()
    workdir = os.path.join(out, name)
    save = TrainLoop.save

    def save_then_stop(self):  # as if killed right after the first checkpoint
        save(self)
        if self.step == INTERRUPT_AT:
            raise Interrupted

    if interrupt:
        TrainLoop.save = save_then_stop
    try:
        main(config(data_dir, strategy, shape), workdir)
    except Interrupted:
        pass
    finally:
        TrainLoop.save = save
    print(f"{name}: {time.time() - t:.1f}s", flush=True)


if __name__ == "__main__":
    out = sys.argv[1]
    assert jax.device_count() == 8, jax.devices()
    data_dir = os.path.join(out, "tfds")
    run(out, "single", data_dir)
    run(out, "data", data_dir, "data", (8, 1))
    run(out, "fsdp", data_dir, "fsdp", (8, 1))
    # Interrupted under fsdp at step 2, resumed under fsdp (exact resume) and,
    # from a copy of the same checkpoint, under data(8) (another mesh).
    run(out, "resume", data_dir, "fsdp", (8, 1), interrupt=True)
    import shutil

    shutil.copytree(os.path.join(out, "resume"), os.path.join(out, "remesh"))
    run(out, "resume", data_dir, "fsdp", (8, 1))
    run(out, "remesh", data_dir, "data", (8, 1))
    # The batch must divide the data axis; the error names it.
    c = config(data_dir, "data", (8, 1))
    c.input.batch_size = 60
    try:
        main(c, os.path.join(out, "bad_batch"))
    except ValueError as e:
        with open(os.path.join(out, "bad_batch.txt"), "w") as f:
            f.write(str(e))
