"""``config.mesh``: the device mesh a run trains on (`keras.distribution`, JAX only).

``config.mesh.strategy`` None trains on one device with no distribution (every
backend). Otherwise `keras_scalevit.distribution.make_distribution` builds Keras'
`DataParallel` / `ModelParallel` for ``config.mesh.shape`` (``(data, model)``;
None: every device on the data axis), checked against the model before any
weight exists, and `main` trains under it. `model.fit` then distributes the
``tf.data`` input itself (`Distribution.distribute_dataset`): on one process the
global batch is split over the data axis; on several processes (a TPU pod) each
process builds the same global pipeline and keeps its slice of every global batch
(``auto_shard_dataset``), so the batches, and the run, are those of one process.
"""

import os

import keras

MESH_FIELDS = ("strategy", "shape", "multihost")
# Set by `jax.distributed` / `keras.distribution.initialize` launchers.
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "KERAS_DISTRIBUTION_JOB_ADDRESSES")


def _field(config, key):
    try:
        return config[key]
    except (KeyError, AttributeError, TypeError):
        return None


def mesh_settings(config):
    """``(strategy, shape, multihost)`` of ``config.mesh``, checked.

    ``strategy`` None means one device; ``shape`` is None or a pair of ints.
    Raises ``TypeError`` / ``ValueError`` naming ``config.mesh.<field>``, and
    ``ValueError`` naming the backend for a strategy on a backend other than JAX.

    Example:
    >>> import ml_collections
    >>> from keras_scalevit.training.mesh import mesh_settings
    >>> mesh_settings(ml_collections.ConfigDict(
    ...     {"mesh": {"strategy": None, "shape": None}}))
    (None, None, None)
    >>> mesh_settings(ml_collections.ConfigDict({"mesh": {"strategy": "pipeline"}}))
    Traceback (most recent call last):
    ...
    ValueError: `config.mesh.strategy` must be one of None, 'data', 'fsdp', 'tensor', 'fsdp+tensor', got 'pipeline'.
    """
    from keras_scalevit.distribution import STRATEGIES
    from keras_scalevit.training.config import _check_fields

    mesh = _field(config, "mesh")
    if mesh is None:
        return None, None, None
    if not hasattr(mesh, "keys"):
        raise TypeError(
            "`config.mesh` must be a ConfigDict with `strategy` and `shape`, got "
            f"{mesh!r}."
        )
    _check_fields("config.mesh", mesh, MESH_FIELDS)
    strategy, shape = _field(mesh, "strategy"), _field(mesh, "shape")
    multihost = _field(mesh, "multihost")
    if strategy is not None and strategy not in STRATEGIES:
        allowed = ", ".join(map(repr, (None,) + STRATEGIES))
        raise ValueError(
            f"`config.mesh.strategy` must be one of {allowed}, got {strategy!r}."
        )
    if multihost is not None and not isinstance(multihost, bool):
        raise TypeError(
            f"`config.mesh.multihost` must be None, True or False, got {multihost!r}."
        )
    if shape is not None:
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
            raise TypeError(
                "`config.mesh.shape` must be None or a (data, model) pair of ints "
                f"(on the command line --config.mesh.shape=4,2), got {shape!r}."
            )
        if len(shape) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
        ):
            raise ValueError(
                "`config.mesh.shape` must be None or a (data, model) pair of ints "
                f">= 1 (on the command line --config.mesh.shape=4,2), got {shape!r}."
            )
        if strategy is None:
            raise ValueError(
                f"`config.mesh.shape`={tuple(shape)} needs `config.mesh.strategy` "
                "('data', 'fsdp', 'tensor' or 'fsdp+tensor'); None trains on one "
                "device."
            )
        shape = tuple(shape)
    if multihost and strategy is None:
        raise ValueError(
            "`config.mesh.multihost`=True needs `config.mesh.strategy` ('data', "
            "'fsdp', 'tensor' or 'fsdp+tensor'): without a mesh every process would "
            "train the whole batch on its own and write the same checkpoint."
        )
    backend = keras.backend.backend()
    if (strategy is not None or multihost) and backend != "jax":
        what = (
            f"`config.mesh.strategy`={strategy!r}"
            if strategy is not None
            else "`config.mesh.multihost`=True"
        )
        raise ValueError(
            f"{what} needs the JAX backend (keras.distribution is implemented for "
            f"JAX only), but the backend is {backend!r}. Set KERAS_BACKEND=jax, or "
            "leave config.mesh.strategy None to train on one device."
        )
    return strategy, shape, multihost


def maybe_initialize(config):
    """Calls `keras.distribution.initialize()` once when the run is multi-host.

    Multi-host when ``config.mesh.multihost`` is True, or it is None and
    ``JAX_COORDINATOR_ADDRESS`` / ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` is set (on
    a TPU pod JAX finds its peers itself; elsewhere those variables, plus
    ``KERAS_DISTRIBUTION_NUM_PROCESSES`` / ``KERAS_DISTRIBUTION_PROCESS_ID`` or
    JAX's ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, name them). Returns whether
    the run is multi-host.
    """
    _, _, multihost = mesh_settings(config)
    if multihost is None:
        multihost = any(os.environ.get(k) for k in _MULTIHOST_ENV)
    if not multihost:
        return False
    if _field(_field(config, "mesh") or {}, "strategy") is None:
        raise ValueError(
            "A multi-host launch (coordinator environment variables are set) needs "
            "`config.mesh.strategy` ('data', 'fsdp', 'tensor' or 'fsdp+tensor'): "
            "without a mesh every process would train on its own."
        )
    import jax

    if not jax.distributed.is_initialized():
        keras.distribution.initialize()
    return True


def make_run_distribution(config, model_builder):
    """The distribution of ``config.mesh`` (None for one device), checked.

    ``model_builder`` (zero-argument) is built abstractly to check that every
    sharded dimension divides its mesh axis; the global batch
    ``config.input.batch_size`` (and the validation batch) must divide the data
    axis.
    """
    strategy, shape, _ = mesh_settings(config)
    if strategy is None:
        return None
    from keras_scalevit.distribution import DATA_AXIS, make_distribution

    distribution = make_distribution(strategy, mesh_shape=shape, model=model_builder)
    mesh = distribution.device_mesh
    data = mesh.shape[mesh.axis_names.index(DATA_AXIS)]
    batch = int(config.input.batch_size)
    if batch % data:
        raise ValueError(
            f"`config.input.batch_size` must divide by the data axis of the mesh "
            f"({data} devices; config.mesh.strategy={strategy!r}, "
            f"config.mesh.shape={shape}), got {batch}; "
            f"use a multiple of {data}, e.g. {max(data, batch - batch % data)}."
        )
    return distribution


def data_axis_size(distribution):
    """How many ways ``distribution`` splits a batch (1 without one)."""
    if distribution is None:
        return 1
    from keras_scalevit.distribution import DATA_AXIS

    mesh = distribution.device_mesh
    return mesh.shape[mesh.axis_names.index(DATA_AXIS)]
