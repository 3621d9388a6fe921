"""The run fingerprint: what a checkpoint records of the run that wrote it."""

import json

import keras

from keras_scalevit.training.config import jit_compile

# Config fields that do not change what a run computes: they may change between
# a checkpoint and the run resuming from it. Everything else in the config is
# part of the fingerprint, so a new config field is fingerprinted by default.
NOT_FINGERPRINTED = (
    "log_training_steps",  # logging cadence
    "ckpt_steps",  # checkpoint cadence
    "verbose",  # progress bar
    "evals",  # validation and few-shot: cadence, data, pp (they never train)
    "input.data.data_dir",  # where the same TFDS data set lives
    "input.cache",  # caching the raw examples does not change their order
    "mesh",  # the device layout: a checkpoint may be restored on another mesh
)
_FINGERPRINT_VERSION = 2


def _flatten(value, prefix, out):
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        for k in sorted(value, key=str):
            _flatten(value[k], f"{prefix}.{k}" if prefix else str(k), out)
    else:
        # JSON-normal form (tuples become lists), as it reads back from the file.
        out[prefix] = json.loads(json.dumps(value, default=str))
    return out


def _excluded(key):
    return any(key == k or key.startswith(k + ".") for k in NOT_FINGERPRINTED)


def run_fingerprint(config, optimizer, *, image_size, total_steps):
    """What must not change between a checkpoint and the run resuming from it.

    A flat ``{field: value}`` dict: every config field except the ones in
    `NOT_FINGERPRINTED` (dotted paths such as ``"model.width"``, ``"loss"``,
    ``"input.pp"``, ``"schedule.timescale"``, ``"seed"``), plus what the run
    derives from the config and the environment: the Keras ``backend``,
    ``resolved.image_size``, ``resolved.total_steps``, ``resolved.jit_compile``,
    the optimizer class and its full Keras config (``optimizer.*``).

    Example:
    >>> from keras_scalevit.configs import digits
    >>> from keras_scalevit.training import build_optimizer, run_fingerprint
    >>> config = digits.get_config()
    >>> fp = run_fingerprint(config, build_optimizer(config, total_steps=100),
    ...                      image_size=8, total_steps=100)
    >>> fp["loss"], fp["model.width"], fp["resolved.total_steps"]
    ('softmax_xent', 64, 100)
    >>> "log_training_steps" in fp, "input.data.data_dir" in fp
    (False, False)
    """
    flat = _flatten(config, "", {})
    fp = {k: v for k, v in flat.items() if not _excluded(k)}
    backend = keras.backend.backend()
    fp.update(
        {
            "fingerprint_version": _FINGERPRINT_VERSION,
            "backend": backend,
            "resolved.image_size": json.loads(json.dumps(image_size)),
            "resolved.total_steps": int(total_steps),
            "resolved.jit_compile": jit_compile(config),
            "optimizer.class": type(optimizer).__name__,
        }
    )
    opt_config = {k: v for k, v in optimizer.get_config().items() if k != "name"}
    fp.update(_flatten(opt_config, "optimizer", {}))
    return fp
