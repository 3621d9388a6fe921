"""Checkpoints: one ``.npz`` per workdir, written atomically, read without pickle.

`Checkpointer` is the ``.npz`` side of the one interface the training loop uses
(``exists``, ``metadata``, ``check``, ``save``, ``wait``, ``restore``, ``read``,
``remove_stale``, ``close``); the module-level functions are the same operations
on a path. On the JAX backend new runs write Orbax checkpoints instead
(`keras_scalevit.training.orbax_checkpoint.OrbaxCheckpointer`, same methods);
``checkpoint.npz`` is what TensorFlow and torch runs write, and what JAX runs
begun before Orbax wrote (they resume from it).
"""

import glob
import json
import os

import keras
import numpy as np

CHECKPOINT_NAME = "checkpoint.npz"
_CKPT_FORMAT = 1
_META_KEY = "__meta__"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt or from another run).

    Example:
    >>> import os, tempfile
    >>> from keras_scalevit.training import CheckpointError, restore_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"not a checkpoint")
    >>> try:
    ...     restore_checkpoint(path, model=None, fingerprint={})
    ... except CheckpointError as e:
    ...     print("corrupt or unreadable" in str(e))
    True
    """


def _variable_table(variables, strip_scope=False):
    # The optimizer's scope is its (process-unique) name, e.g. "adafactor_1".
    def name(v):
        return v.path.split("/", 1)[-1] if strip_scope else v.path

    return [[name(v), list(v.shape), str(v.dtype)] for v in variables]


def _groups(model):
    return (("model", model.variables), ("optimizer", model.optimizer.variables))


def _check_variable_tables(path, meta, model):
    """Raises `CheckpointError` unless ``meta``'s variable tables are ``model``'s.

    Names, shapes and dtypes of the model's and its optimizer's variables, in
    order. Returns ``[(group, variables, table), ...]`` for the caller to fill.
    """
    groups = []
    for group, variables in _groups(model):
        table = _variable_table(variables, group == "optimizer")
        saved = meta.get(group)
        if saved is None or len(saved) != len(table):
            raise _mismatch(
                path,
                f"{group} has {len(table)} variables, the checkpoint "
                f"{None if saved is None else len(saved)}",
            )
        for i, (mine, theirs) in enumerate(zip(table, saved, strict=True)):
            if mine != theirs:
                raise _mismatch(
                    path, f"{group} variable {i} is {mine}, checkpoint has {theirs}"
                )
        groups.append((group, variables, table))
    return groups


def save_checkpoint(path, model, step, fingerprint):
    """Writes model + optimizer variables and ``step`` atomically to ``path``.

    Example:

    A round trip through `restore_checkpoint` (the model must be compiled and
    its optimizer built).
    >>> import os, tempfile
    >>> import numpy as np, keras
    >>> from keras_scalevit.training import restore_checkpoint, save_checkpoint
    >>> def make_model():
    ...     # Fixed names: the checkpoint records variable paths.
    ...     model = keras.Sequential(
    ...         [keras.Input((4,)), keras.layers.Dense(2, name="dense")], name="net")
    ...     model.compile(optimizer="sgd", loss="mse")
    ...     model.optimizer.build(model.trainable_variables)
    ...     return model
    >>> model = make_model()
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> save_checkpoint(path, model, step=7, fingerprint={"run": "demo"})
    >>> other = make_model()
    >>> restore_checkpoint(path, other, fingerprint={"run": "demo"})
    7
    >>> bool(np.array_equal(keras.ops.convert_to_numpy(other.layers[0].kernel),
    ...                     keras.ops.convert_to_numpy(model.layers[0].kernel)))
    True
    """
    arrays, meta = {}, {"format": _CKPT_FORMAT, "step": int(step)}
    meta["fingerprint"] = fingerprint
    for group, variables in _groups(model):
        meta[group] = _variable_table(variables, group == "optimizer")
        for i, v in enumerate(variables):
            a = np.asarray(keras.ops.convert_to_numpy(v.value))
            if a.dtype.name == "bfloat16":
                a = a.view(np.uint16)  # npz cannot store ml_dtypes' bfloat16
            arrays[f"{group}/{i}"] = a
    arrays[_META_KEY] = np.asarray(json.dumps(meta))
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _mismatch(path, what):
    return CheckpointError(
        f"Checkpoint {path} does not match this run: {what}. It was written by a "
        "different configuration; resume with the original config, or use a new "
        "--workdir (or delete the file) to start from scratch."
    )


_ABSENT = "(absent)"


def fingerprint_diff(saved, current):
    """The fields that differ, as ``["field: old -> new", ...]`` (sorted).

    Example:
    >>> from keras_scalevit.training import fingerprint_diff
    >>> fingerprint_diff({"loss": "softmax_xent", "seed": 0},
    ...                  {"loss": "sigmoid_xent", "seed": 0, "backend": "jax"})
    ["backend: (absent) → 'jax'", "loss: 'softmax_xent' → 'sigmoid_xent'"]
    """
    saved = saved if isinstance(saved, dict) else {}
    lines = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if old != new:
            old = old if old is _ABSENT else repr(old)
            new = new if new is _ABSENT else repr(new)
            lines.append(f"{key}: {old} → {new}")
    return lines


def check_fingerprint(path, saved, current):
    """Raises `CheckpointError` naming ``path`` and only the differing fields.

    Example:
    >>> from keras_scalevit.training import CheckpointError, check_fingerprint
    >>> check_fingerprint("ckpt.npz", {"lr": 0.1}, {"lr": 0.1})
    >>> try:
    ...     check_fingerprint("ckpt.npz", {"lr": 0.1, "seed": 0}, {"lr": 0.2, "seed": 0})
    ... except CheckpointError as e:
    ...     print(str(e).splitlines()[1])
      lr: 0.1 → 0.2
    """
    diffs = fingerprint_diff(saved, current)
    if diffs:
        raise CheckpointError(
            f"Checkpoint {path} does not match this run (it was written by a "
            "different configuration); these fields differ (checkpoint → this "
            "run):\n  "
            + "\n  ".join(diffs)
            + "\nResume with the original values, or use a new --workdir (or "
            "delete the file) to start from scratch."
        )


def read_checkpoint_meta(path):
    """The metadata of checkpoint ``path`` (``step``, ``fingerprint``, tables).

    Reads no arrays. Raises `CheckpointError` naming ``path`` if the file is
    unreadable or of an unknown format.

    Example:
    >>> import os, tempfile
    >>> import keras
    >>> from keras_scalevit.training import read_checkpoint_meta, save_checkpoint
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> save_checkpoint(path, model, step=3, fingerprint={"lr": 0.1})
    >>> meta = read_checkpoint_meta(path)
    >>> meta["step"], meta["fingerprint"]
    (3, {'lr': 0.1})
    """
    meta, _ = _read(path, arrays=False)
    return meta


def _read(path, arrays=True):
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[_META_KEY]))
            values = {k: z[k] for k in z.files if k != _META_KEY} if arrays else None
    except Exception as e:  # zip/npz/json errors: all mean "corrupt"
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}). "
            "Delete it to start from scratch (or restore a good copy)."
        ) from e
    if not isinstance(meta, dict) or meta.get("format") != _CKPT_FORMAT:
        raise CheckpointError(
            f"Checkpoint {path} has an unknown format "
            f"{meta.get('format') if isinstance(meta, dict) else meta!r}."
        )
    return meta, values


def read_checkpoint(path):
    """The metadata and arrays of checkpoint ``path``, as NumPy, by name.

    Returns ``(meta, arrays)``: ``meta`` as `read_checkpoint_meta` gives it and
    ``arrays`` ``{"model/<i>": ..., "optimizer/<i>": ...}`` in the order of the
    tables ``meta["model"]`` and ``meta["optimizer"]``; bfloat16 variables come
    back as ``ml_dtypes.bfloat16`` arrays (`OrbaxCheckpointer.read` gives the same).

    Example:
    >>> import os, tempfile
    >>> import keras
    >>> from keras_scalevit.training import read_checkpoint, save_checkpoint
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> save_checkpoint(path, model, step=3, fingerprint={})
    >>> meta, arrays = read_checkpoint(path)
    >>> meta["step"], arrays["model/0"].shape
    (3, (4, 2))
    """
    meta, arrays = _read(path)
    for group in ("model", "optimizer"):
        for i, (_, _, dtype) in enumerate(meta.get(group) or ()):
            key = f"{group}/{i}"
            if dtype == "bfloat16" and key in arrays and arrays[key].dtype == np.uint16:
                import ml_dtypes

                arrays[key] = arrays[key].view(ml_dtypes.bfloat16)
    return meta, arrays


def remove_stale_temp_files(path):
    """Deletes ``<path>.tmp-<pid>`` files left by saves that were killed.

    Returns the removed paths. Only one run may use a workdir at a time.

    Example:
    >>> import os, tempfile
    >>> from keras_scalevit.training import remove_stale_temp_files
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> open(path + ".tmp-12345", "wb").close()
    >>> [os.path.basename(p) for p in remove_stale_temp_files(path)]
    ['checkpoint.npz.tmp-12345']
    """
    removed = []
    for tmp in sorted(glob.glob(glob.escape(path) + ".tmp-*")):
        try:
            os.remove(tmp)
        except FileNotFoundError:
            continue
        removed.append(tmp)
    return removed


def restore_checkpoint(path, model, fingerprint):
    """Loads ``path`` into ``model`` and its (built) optimizer; returns the step.

    Raises:
        CheckpointError: naming ``path``, if the file is unreadable or was written
            by a run with a different model, input or optimizer.

    Example:
    >>> import os, tempfile
    >>> import keras
    >>> from keras_scalevit.training import (
    ...     CheckpointError, restore_checkpoint, save_checkpoint)
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> save_checkpoint(path, model, step=3, fingerprint={"lr": "0.1"})
    >>> restore_checkpoint(path, model, fingerprint={"lr": "0.1"})
    3
    >>> try:
    ...     restore_checkpoint(path, model, fingerprint={"lr": "0.2"})
    ... except CheckpointError as e:
    ...     print(str(e).splitlines()[1])
      lr: '0.1' → '0.2'
    """
    meta, arrays = read_checkpoint(path)
    check_fingerprint(path, meta.get("fingerprint", {}), fingerprint)
    values = []
    for group, variables, table in _check_variable_tables(path, meta, model):
        for i, (v, mine) in enumerate(zip(variables, table, strict=True)):
            key = f"{group}/{i}"
            if key not in arrays:
                raise CheckpointError(f"Checkpoint {path} is corrupt: no {key!r}.")
            a = arrays[key]
            if list(a.shape) != mine[1]:
                raise CheckpointError(
                    f"Checkpoint {path} is corrupt: {key} ({mine[0]}) has shape "
                    f"{list(a.shape)}, its table says {mine[1]}."
                )
            values.append((v, a))
    for v, a in values:
        v.assign(a)
    return int(meta["step"])


class Checkpointer:
    """The ``.npz`` checkpoint of one workdir: the interface the training loop uses.

    One file (`save_checkpoint` / `restore_checkpoint`), written synchronously
    (``wait`` and ``close`` have nothing to wait for). TensorFlow and torch runs
    use it, and JAX runs whose workdir already holds a ``checkpoint.npz``;
    `make_checkpointer` picks it or `OrbaxCheckpointer` (same methods).

    Args:
        path: the checkpoint file, e.g. ``<workdir>/checkpoint.npz``.

    Example:
    >>> import os, tempfile
    >>> import keras
    >>> from keras_scalevit.training import Checkpointer
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> model.optimizer.build(model.trainable_variables)
    >>> ckpt = Checkpointer(os.path.join(tempfile.mkdtemp(), "checkpoint.npz"))
    >>> ckpt.exists()
    False
    >>> ckpt.save(model, step=4, fingerprint={"seed": 0})
    >>> ckpt.metadata()["step"], ckpt.restore(model, fingerprint={"seed": 0})
    (4, 4)
    """

    def __init__(self, path):
        self.path = os.fspath(path)

    def exists(self):
        """Whether a checkpoint has been written."""
        return os.path.exists(self.path)

    def remove_stale(self):
        """Deletes temp files of interrupted saves; returns their paths."""
        return remove_stale_temp_files(self.path)

    def metadata(self):
        """``step``, ``fingerprint`` and variable tables, without the arrays."""
        return read_checkpoint_meta(self.path)

    def check(self, fingerprint):
        """Raises `CheckpointError` if the checkpoint is of another run."""
        check_fingerprint(
            self.path, self.metadata().get("fingerprint", {}), fingerprint
        )

    def save(self, model, step, fingerprint):
        """Writes model and optimizer variables at ``step``, atomically."""
        save_checkpoint(self.path, model, step, fingerprint)

    def wait(self):
        """Returns once the last save is on disk (at once: saves are synchronous)."""

    def close(self):
        """Waits for the last save and releases resources (nothing to release)."""

    def restore(self, model, fingerprint):
        """Loads the checkpoint into ``model`` and its optimizer; returns the step."""
        return restore_checkpoint(self.path, model, fingerprint)

    def read(self):
        """``(meta, {"model/<i>": array, "optimizer/<i>": array})``: see `read_checkpoint`."""
        return read_checkpoint(self.path)
