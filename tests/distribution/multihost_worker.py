"""One of two JAX processes (4 CPU devices each) training the digits config.

Run by tests/distribution/test_train_mesh.py as ``python multihost_worker.py OUT
DATA_DIR`` with ``KERAS_DISTRIBUTION_JOB_ADDRESSES``,
``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID`` set: the
same command on every process, as on the hosts of a pod. `main` calls
`keras.distribution.initialize`, trains under ``data`` on the 8 global devices,
is interrupted after its step-2 Orbax checkpoint and resumes from it; then trains
under ``fsdp`` (weights sharded across the hosts) and exports the model.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_mesh_worker import config, run  # noqa: E402

if __name__ == "__main__":
    out, data_dir = sys.argv[1], sys.argv[2]
    run(out, "multihost", data_dir, "data", None, interrupt=True)
    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    run(out, "multihost", data_dir, "data", None)
    # Weights sharded across the two hosts: model.keras needs a cross-process gather.
    run(out, "multihost_fsdp", data_dir, "fsdp", None)
    del config
