"""Sharded, multi-host checkpoints with Orbax, behind `Checkpointer`'s interface.

`OrbaxCheckpointer` keeps the last checkpoint of a workdir in
``<workdir>/checkpoint/<step>/`` through `orbax.checkpoint.CheckpointManager`:
every process writes the shards it holds (nothing is gathered to one host), the
step directory appears only once complete (Orbax commits it atomically), and the
metadata (step, fingerprint, variable tables) is JSON beside the arrays. Restoring
reads each array straight into the sharding of the variable it fills, so a
checkpoint written under one mesh restores under another (or on one device).
Nothing is unpickled. JAX backend only (Orbax stores `jax.Array`s);
`make_checkpointer` picks it, or the ``.npz`` `Checkpointer` elsewhere.
"""

import glob
import os
import shutil

from keras_scalevit.training.checkpoint import (
    CheckpointError,
    _mismatch,
    _variable_table,
    check_fingerprint,
)

ORBAX_DIR_NAME = "checkpoint"
_FORMAT = "orbax-1"


def _groups(model):
    return (("model", model.variables), ("optimizer", model.optimizer.variables))


class OrbaxCheckpointer:
    """The Orbax checkpoint of one workdir (same methods as `Checkpointer`).

    Args:
        path: the checkpoint directory, e.g. ``<workdir>/checkpoint``.

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
    >>> ckpt.restore(model, fingerprint={"seed": 0})  # doctest: +SKIP
    4
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._manager = None

    def _mngr(self):
        if self._manager is None:
            import orbax.checkpoint as ocp

            options = ocp.CheckpointManagerOptions(
                max_to_keep=1,
                create=True,
                # Synchronous: `save` returns with the step committed, as the
                # .npz writer does (what exact resume after kill -9 relies on).
                enable_async_checkpointing=False,
            )
            self._manager = ocp.CheckpointManager(
                os.path.abspath(self.path),
                options=options,
                item_names=("state", "meta"),
            )
        return self._manager

    def exists(self):
        """Whether a committed checkpoint has been written."""
        if not os.path.isdir(self.path):
            return False
        return self._mngr().latest_step() is not None

    def remove_stale(self):
        """Deletes step directories of interrupted (uncommitted) saves."""
        removed = []
        for tmp in sorted(glob.glob(os.path.join(glob.escape(self.path), "*.orbax-*"))):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        return removed

    def metadata(self):
        """``step``, ``fingerprint`` and variable tables, without the arrays."""
        import orbax.checkpoint as ocp

        try:
            step = self._mngr().latest_step()
            restored = self._mngr().restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
            meta = dict(restored["meta"])
        except Exception as e:
            raise CheckpointError(
                f"Checkpoint {self.path} is corrupt or unreadable "
                f"({type(e).__name__}: {e}). Delete it to start from scratch."
            ) from e
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
        """Writes model and optimizer variables at ``step`` (every process its shards)."""
        import orbax.checkpoint as ocp

        meta = {"format": _FORMAT, "step": int(step), "fingerprint": fingerprint}
        state = {}
        for group, variables in _groups(model):
            meta[group] = _variable_table(variables, group == "optimizer")
            state[group] = [v.value for v in variables]
        mngr = self._mngr()
        mngr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mngr.wait_until_finished()

    def restore(self, model, fingerprint):
        """Loads the checkpoint into ``model`` and its optimizer; returns the step.

        Each array is read into the sharding of the variable it fills.
        """
        import jax
        import orbax.checkpoint as ocp

        meta = self.metadata()
        check_fingerprint(self.path, meta.get("fingerprint", {}), fingerprint)
        target = {}
        for group, variables in _groups(model):
            table = _variable_table(variables, group == "optimizer")
            saved = meta.get(group)
            if saved is None or len(saved) != len(table):
                raise _mismatch(
                    self.path,
                    f"{group} has {len(table)} variables, the checkpoint "
                    f"{None if saved is None else len(saved)}",
                )
            for i, (mine, theirs) in enumerate(zip(table, saved, strict=True)):
                if mine != theirs:
                    raise _mismatch(
                        self.path,
                        f"{group} variable {i} is {mine}, checkpoint has {theirs}",
                    )
            target[group] = [
                jax.ShapeDtypeStruct(
                    v.value.shape, v.value.dtype, sharding=v.value.sharding
                )
                for v in variables
            ]
        try:
            restored = self._mngr().restore(
                int(meta["step"]),
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
            )["state"]
        except Exception as e:
            raise CheckpointError(
                f"Checkpoint {self.path} is corrupt or unreadable "
                f"({type(e).__name__}: {e}). Delete it to start from scratch."
            ) from e
        for group, variables in _groups(model):
            for v, a in zip(variables, restored[group], strict=True):
                v.assign(a)
        return int(meta["step"])


def make_checkpointer(workdir, distribution=None):
    """The checkpointer of ``workdir``: Orbax for sharded JAX runs, else ``.npz``.

    The format a workdir already holds wins (a run resumes from what it wrote,
    under any mesh: the ``.npz`` reader assigns each array to its variable's
    sharding). A new run on the JAX backend under a distribution (a mesh, or
    several processes) writes Orbax checkpoints, sharded; everything else (one
    device, TensorFlow, torch: no Orbax support for their variables) writes
    today's single ``checkpoint.npz``.

    Example:
    >>> import tempfile
    >>> from keras_scalevit.training.orbax_checkpoint import make_checkpointer
    >>> type(make_checkpointer(tempfile.mkdtemp())).__name__
    'Checkpointer'
    """
    import keras

    from keras_scalevit.training.checkpoint import CHECKPOINT_NAME, Checkpointer

    npz = Checkpointer(os.path.join(workdir, CHECKPOINT_NAME))
    orbax_dir = os.path.join(workdir, ORBAX_DIR_NAME)
    if npz.exists():
        return npz
    if os.path.isdir(orbax_dir) and keras.backend.backend() == "jax":
        return OrbaxCheckpointer(orbax_dir)
    if distribution is not None and keras.backend.backend() == "jax":
        return OrbaxCheckpointer(orbax_dir)
    return npz
