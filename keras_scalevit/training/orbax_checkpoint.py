"""Orbax checkpoints (sharded, multi-host, asynchronous) behind one interface.

On the JAX backend every new run checkpoints with `OrbaxCheckpointer`, on one
device or under a mesh: the last checkpoint of a workdir lives in
``<workdir>/checkpoint/<step>/`` through `orbax.checkpoint.CheckpointManager`.
Every process writes the shards it holds (nothing is gathered to one host); the
step directory is written as ``<step>.orbax-checkpoint-tmp*`` and renamed
once complete (Orbax commits it atomically), so a killed run leaves the
previous step intact; the metadata (step, fingerprint, variable tables) is JSON
beside the arrays. Saves are asynchronous: `OrbaxCheckpointer.save` returns once
the arrays are copied off the accelerator, and the files are written while
training continues (the next save, `wait` and `close` wait for it). Restoring
reads each array straight into the sharding of the variable it fills, so a
checkpoint written under one mesh restores under another (or on one device).
Nothing is unpickled.

Why `orbax.checkpoint` directly rather than `keras.callbacks.OrbaxCheckpoint`
(Keras 3.15): the callback saves, but numbers its steps by the batches it has
seen in this `fit` call (or by epoch), has no restore path into a built model
and optimizer, and records no run fingerprint; exact resume needs the optimizer
step, a check that the checkpoint belongs to this run, and a restore straight
into each variable's sharding.

TensorFlow and torch keep the single ``checkpoint.npz`` (`Checkpointer`, same
methods; Orbax stores `jax.Array`s); so does a JAX run whose workdir already
holds a ``checkpoint.npz`` (one begun before its runs wrote Orbax), which
resumes from it. `make_checkpointer` picks the one a workdir uses.
"""

import glob
import logging
import os
import shutil

import numpy as np

from keras_scalevit.training.checkpoint import (
    CHECKPOINT_NAME,
    Checkpointer,
    CheckpointError,
    _check_variable_tables,
    _groups,
    _variable_table,
    check_fingerprint,
)

ORBAX_DIR_NAME = "checkpoint"
_FORMAT = "orbax-1"


class _OrbaxInfoFilter(logging.Filter):
    """Drops Orbax's INFO records (~100 lines per run: every save, wait, delete)."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or (
            os.sep + "orbax" + os.sep not in record.pathname
        )


def _quiet_orbax_info():
    # Orbax logs through absl's one logger, shared with everything else that
    # uses absl; only Orbax's own records below WARNING are dropped.
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxInfoFilter) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxInfoFilter())


class OrbaxCheckpointer:
    """The Orbax checkpoint of one workdir (same methods as `Checkpointer`).

    Args:
        path: the checkpoint directory, e.g. ``<workdir>/checkpoint``.
        asynchronous: if True (the default), `save` returns once the arrays are
            on the host and writes the files in the background; `wait` (or the
            next `save`, or `close`) returns once they are committed. If False,
            `save` returns with the step committed.

    Example:

    (JAX only; skipped in the backend-neutral doctests.)
    >>> import os, tempfile
    >>> import keras
    >>> from keras_scalevit.training.orbax_checkpoint import OrbaxCheckpointer
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> ckpt = OrbaxCheckpointer(os.path.join(tempfile.mkdtemp(), "checkpoint"))
    >>> ckpt.save(model, step=4, fingerprint={"seed": 0})  # doctest: +SKIP
    >>> ckpt.wait()  # doctest: +SKIP
    >>> ckpt.restore(model, fingerprint={"seed": 0})  # doctest: +SKIP
    4
    >>> meta, arrays = ckpt.read()  # doctest: +SKIP
    >>> meta["step"], arrays["model/0"].shape  # doctest: +SKIP
    (4, (4, 2))
    >>> ckpt.close()  # doctest: +SKIP
    """

    def __init__(self, path, *, asynchronous=True):
        self.path = os.fspath(path)
        self.asynchronous = bool(asynchronous)
        self._manager = None

    def _mngr(self):
        if self._manager is None:
            import orbax.checkpoint as ocp

            _quiet_orbax_info()

            options = ocp.CheckpointManagerOptions(
                max_to_keep=1,
                create=True,
                enable_async_checkpointing=self.asynchronous,
            )
            registry = ocp.handlers.create_default_handler_registry(
                state=ocp.StandardCheckpointHandler(),
                meta=ocp.JsonCheckpointHandler(),
            )
            self._manager = ocp.CheckpointManager(
                os.path.abspath(self.path),
                options=options,
                handler_registry=registry,
            )
        return self._manager

    def _corrupt(self, e):
        return CheckpointError(
            f"Checkpoint {self.path} is corrupt or unreadable "
            f"({type(e).__name__}: {e}). Delete it to start from scratch."
        )

    def exists(self):
        """Whether a committed checkpoint has been written."""
        if not os.path.isdir(self.path):
            return False
        self.wait()
        return self._mngr().latest_step() is not None

    def remove_stale(self):
        """Deletes the step directories of interrupted (uncommitted) saves.

        Orbax writes ``<step>.orbax-checkpoint-tmp*`` and renames it to
        ``<step>`` once complete; a run killed in between leaves the former.
        Returns their paths. Only one run may use a workdir at a time.
        """
        removed = []
        pattern = os.path.join(glob.escape(self.path), "*.orbax-checkpoint-tmp*")
        for tmp in sorted(glob.glob(pattern)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        return removed

    def metadata(self):
        """``step``, ``fingerprint`` and variable tables, without the arrays."""
        import orbax.checkpoint as ocp

        self.wait()
        try:
            step = self._mngr().latest_step()
            if step is None:
                raise FileNotFoundError(f"no committed step in {self.path}")
            restored = self._mngr().restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
            meta = dict(restored["meta"])
        except Exception as e:
            raise self._corrupt(e) from e
        if meta.get("format") != _FORMAT or int(meta.get("step", -1)) != step:
            raise CheckpointError(
                f"Checkpoint {self.path} has an unknown format or a step that "
                f"disagrees with its directory ({meta.get('format')!r}, {step})."
            )
        return meta

    def check(self, fingerprint):
        """Raises `CheckpointError` if the checkpoint is of another run."""
        check_fingerprint(
            self.path, self.metadata().get("fingerprint", {}), fingerprint
        )

    def save(self, model, step, fingerprint):
        """Writes model and optimizer variables at ``step`` (every process its shards).

        Asynchronous: returns once Orbax holds host copies of the `jax.Array`s the
        variables hold now, and commits the step in the background. Training may
        go on meanwhile: Keras replaces the variables' arrays, and its compiled
        step may donate their device buffers (on CPU, where the host copy can be
        a view of the buffer, XLA does not reuse a buffer still viewed; tested).
        Waits for the previous save first.
        """
        import orbax.checkpoint as ocp

        meta = {"format": _FORMAT, "step": int(step), "fingerprint": fingerprint}
        state = {}
        for group, variables in _groups(model):
            meta[group] = _variable_table(variables, group == "optimizer")
            state[group] = [v.value for v in variables]
        self.wait()  # a failed previous save raises here, naming the path
        self._mngr().save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        if not self.asynchronous:
            self.wait()

    def wait(self):
        """Returns once the last save is committed; raises `CheckpointError` if it failed."""
        if self._manager is None:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(
                f"Checkpoint {self.path}: writing a step failed "
                f"({type(e).__name__}: {e}); the last committed step is intact."
            ) from e

    def close(self):
        """Waits for the last save (see `wait`) and releases Orbax's resources."""
        if self._manager is None:
            return
        try:
            self.wait()
        finally:
            self._manager.close()
            self._manager = None

    def _restore_state(self, step, target):
        import orbax.checkpoint as ocp

        try:
            return self._mngr().restore(
                int(step),
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
            )["state"]
        except Exception as e:
            raise self._corrupt(e) from e

    def restore(self, model, fingerprint):
        """Loads the checkpoint into ``model`` and its optimizer; returns the step.

        Each array is read into the sharding of the variable it fills.
        """
        import jax

        meta = self.metadata()
        check_fingerprint(self.path, meta.get("fingerprint", {}), fingerprint)
        target = {}
        for group, variables, _ in _check_variable_tables(self.path, meta, model):
            target[group] = [
                jax.ShapeDtypeStruct(
                    v.value.shape, v.value.dtype, sharding=v.value.sharding
                )
                for v in variables
            ]
        restored = self._restore_state(meta["step"], target)
        for group, variables in _groups(model):
            for v, a in zip(variables, restored[group], strict=True):
                v.assign(a)
        return int(meta["step"])

    def read(self):
        """``(meta, {"model/<i>": array, "optimizer/<i>": array})`` as NumPy.

        The same as `Checkpointer.read` (bfloat16 as ``ml_dtypes.bfloat16``),
        each array read whole on this process, whatever mesh wrote it.
        """
        meta = self.metadata()
        try:
            saved = self._mngr().item_metadata(int(meta["step"]))["state"]
            saved = getattr(saved, "tree", saved)
            # NumPy targets (no sharding, unlike a ShapeDtypeStruct, which would
            # take the writer's mesh from the metadata): read whole, on the host.
            target = {
                group: [np.zeros(tuple(m.shape), m.dtype) for m in saved[group]]
                for group in ("model", "optimizer")
            }
        except Exception as e:
            raise self._corrupt(e) from e
        restored = self._restore_state(meta["step"], target)
        arrays = {}
        for group in ("model", "optimizer"):
            for i, a in enumerate(restored[group]):
                arrays[f"{group}/{i}"] = np.asarray(a)
        return meta, arrays


def _has_orbax_steps(directory):
    """Whether ``directory`` holds a committed Orbax step (a ``<digits>/`` folder)."""
    try:
        return any(e.name.isdigit() and e.is_dir() for e in os.scandir(directory))
    except OSError:
        return False


def make_checkpointer(workdir):
    """The checkpointer of ``workdir``: Orbax on JAX, ``checkpoint.npz`` elsewhere.

    On the JAX backend a run writes Orbax checkpoints (`OrbaxCheckpointer`,
    ``<workdir>/checkpoint/``, asynchronous, sharded under a mesh), on one device
    too; a workdir that already holds a ``checkpoint.npz`` (a run begun before
    JAX runs wrote Orbax) resumes from it and goes on writing it (the ``.npz``
    reader assigns each array to its variable's sharding, so also under a mesh).
    TensorFlow and torch write ``checkpoint.npz`` (`Checkpointer`); a workdir
    whose checkpoint is Orbax's (written on JAX) is refused there with a
    `CheckpointError` naming it.

    Example:
    >>> import tempfile
    >>> import keras
    >>> from keras_scalevit.training.orbax_checkpoint import make_checkpointer
    >>> ckpt = make_checkpointer(tempfile.mkdtemp())
    >>> expected = "OrbaxCheckpointer" if keras.backend.backend() == "jax" else "Checkpointer"
    >>> type(ckpt).__name__ == expected
    True
    """
    import keras

    workdir = os.fspath(workdir)
    npz = Checkpointer(os.path.join(workdir, CHECKPOINT_NAME))
    orbax_dir = os.path.join(workdir, ORBAX_DIR_NAME)
    backend = keras.backend.backend()
    if backend == "jax":
        return npz if npz.exists() else OrbaxCheckpointer(orbax_dir)
    if not npz.exists() and _has_orbax_steps(orbax_dir):
        raise CheckpointError(
            f"Checkpoint {orbax_dir} is an Orbax checkpoint, written on the JAX "
            f"backend; this run uses KERAS_BACKEND={backend}, which reads and "
            f"writes {CHECKPOINT_NAME}. Resume it with KERAS_BACKEND=jax, or use a "
            "new --workdir to start from scratch."
        )
    return npz
