r"""Training entry point: big_vision's ``train.py`` recipe with Keras ``model.fit``.

Usage::

    python -m keras_scalevit.train --config=keras_scalevit/configs/digits.py \
        --workdir=/tmp/digits
    python -m keras_scalevit.train --config=keras_scalevit/configs/vit_i1k.py:variant=B/16 \
        --workdir=/tmp/b16 --config.total_steps=1000

``--config`` defaults to the embedded digits config. The config follows
big_vision's current layout (``config.input.*``, ``config.model.*``,
``config.optax_name``/``optax``/``lr``/``wd``/``wd_mults``/``schedule``,
``config.evals.*``; see ``keras_scalevit/configs/digits.py`` for every key).

Workdir contents:

- ``checkpoint.npz``: the last checkpoint (model and optimizer variables, the
  optimizer step and a fingerprint of the run), written every
  ``config.ckpt_steps`` steps and at the end, atomically (temp file, then
  ``os.replace``), so a killed run always leaves a complete checkpoint.
- ``metrics.jsonl``: one JSON object per line: training lines every
  ``config.log_training_steps`` steps (``loss`` and ``prec@1`` are Keras' running
  means over the current progress-bar epoch), epoch lines with ``val_*`` and
  ``fewshot/*`` results, and a last ``"final": true`` line.
- ``training_curves.png``, ``model.keras`` and ``config.json``.

Exact resume: rerunning the same command continues from ``checkpoint.npz``. The
data pipeline is a deterministic function of the seed and the position, so the
input restarts at batch ``step`` (``make_dataset(start_batch=step)``); together
with the restored variables the resumed run ends with the same weights as an
uninterrupted one (bitwise on JAX in the tests). A checkpoint that cannot be read
or that belongs to a different run (model, input or optimizer type) raises
`CheckpointError` naming the file: it is never silently ignored.
"""

import os

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "digits.py")


def cli(argv=None):
    """The command line: parses the flags, then imports the training stack.

    ``python -m keras_scalevit.train --config=PATH[:ARG] --workdir=DIR
    [--config.FIELD=VALUE ...]``; ``--help`` answers before Keras, JAX or
    TensorFlow load.
    """
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file(
        "config",
        _DEFAULT_CONFIG,
        "Training config file (path[:arg]).",
        lock_config=True,
    )
    workdir = flags.DEFINE_string("workdir", None, "Output directory.", required=True)

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        from keras_scalevit.train import main  # the heavy imports, after the flags

        main(config.value, workdir.value)

    app.run(run, argv=argv)  # exits


if __name__ == "__main__":
    cli()

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "training_curves.png"
MODEL_NAME = "model.keras"
_CKPT_FORMAT = 1
_META_KEY = "__meta__"
# pp ops whose first argument fixes the output image size (last one wins).
_SIZE_OPS = (
    "resize",
    "central_crop",
    "random_crop",
    "inception_crop",
    "decode_jpeg_and_inception_crop",
)


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt or from another run).

    Example:
    >>> import os, tempfile
    >>> from keras_scalevit.train import CheckpointError, restore_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"not a checkpoint")
    >>> try:
    ...     restore_checkpoint(path, model=None, fingerprint={})
    ... except CheckpointError as e:
    ...     print("corrupt or unreadable" in str(e))
    True
    """


# ---------------------------------------------------------------- config utils


def _get(config, key, default=None):
    """``config.key`` for ConfigDicts and dicts, ``default`` when absent/None."""
    if config is None:
        return default
    try:
        value = config[key]
    except (KeyError, AttributeError, TypeError):
        return default
    return default if value is None else value


def _to_dict(value):
    if value is None:
        return {}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return dict(value)


def image_size_from_config(config):
    """``config.image_size`` or the size the training pp string produces.

    The last ``resize(N)``, ``*_crop(N)`` op of ``config.input.pp`` decides; a
    config whose pp ends at an unknown size must set ``config.image_size``.

    Example:
    >>> import ml_collections
    >>> from keras_scalevit.train import image_size_from_config
    >>> config = ml_collections.ConfigDict(
    ...     {"image_size": None,
    ...      "input": {"pp": "decode|inception_crop(224)|flip_lr|resize(32)"}})
    >>> image_size_from_config(config)
    32
    >>> config.image_size = 16
    >>> image_size_from_config(config)
    16
    """
    size = _get(config, "image_size")
    if size:
        return size
    pp = _get(config.input, "pp", "")
    found = None
    for op, arg in re.findall(r"(\w+)\(\s*(\d+)", pp):
        if op in _SIZE_OPS:
            found = int(arg)
    if found is None:
        raise ValueError(
            "Cannot infer the image size from config.input.pp="
            f"{pp!r}; set config.image_size."
        )
    return found


def total_steps_from_config(config, num_train_examples=None):
    """``config.total_steps``, or ``round(total_epochs * examples / batch)``.

    Example:
    >>> import ml_collections
    >>> from keras_scalevit.train import total_steps_from_config
    >>> config = ml_collections.ConfigDict(
    ...     {"total_steps": None, "total_epochs": 2.0, "input": {"batch_size": 64}})
    >>> total_steps_from_config(config, num_train_examples=1438)
    45
    >>> config.total_steps = 10
    >>> total_steps_from_config(config)
    10
    """
    steps = _get(config, "total_steps")
    if steps:
        return int(steps)
    epochs = _get(config, "total_epochs")
    if epochs is None:
        raise ValueError("The config needs `total_steps` or `total_epochs`.")
    if num_train_examples is None:
        raise ValueError("`total_epochs` needs the number of training examples.")
    return max(1, round(epochs * num_train_examples / config.input.batch_size))


# Top-level config fields the entry point knows (read here or by the builders it
# calls). Anything else is a typo or a field this library does not implement.
CONFIG_FIELDS = (
    "seed", "input", "image_size", "mixup", "total_steps", "total_epochs",
    "log_training_steps", "ckpt_steps", "verbose", "model_name", "model",
    "num_classes", "init_head_bias", "model_init", "model_load", "loss",
    "optax_name", "optax", "lr", "wd", "wd_mults", "lr_mults", "schedule",
    "grad_clip_norm", "evals", "ema_momentum", "jit_compile", "mesh",
)  # fmt: skip
INPUT_FIELDS = ("data", "pp", "batch_size", "shuffle_buffer_size", "cache")


def _field(config, key):
    """``config[key]`` or None (absent, or a None placeholder)."""
    try:
        return config[key]
    except (KeyError, AttributeError, TypeError):
        return None


def _check_fields(where, config, allowed):
    """TypeError naming the unknown fields of ``config`` and their close matches."""
    import difflib

    unknown = [
        k
        for k in (config.keys() if hasattr(config, "keys") else ())
        if k not in allowed
    ]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), allowed, n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    noun = "field" if len(unknown) == 1 else "fields"
    raise TypeError(
        f"`{where}` has an unknown {noun} {', '.join(parts)}; the known fields "
        f"are {', '.join(map(repr, sorted(allowed)))}."
    )


def validate_config(config):
    """Checks the fields the entry point reads; raises before any work is done.

    ``TypeError`` for a field of the wrong kind or an unknown field (with the
    close matches), ``ValueError`` for a bad value; the message names the field
    as ``config.<path>``. The model, optimizer, schedule, data and few-shot
    settings are checked again, in depth, by the objects built from them.

    Example:
    >>> from keras_scalevit.configs import digits
    >>> from keras_scalevit.train import validate_config
    >>> config = digits.get_config()
    >>> validate_config(config)
    >>> config.total_steps = 0
    >>> validate_config(config)
    Traceback (most recent call last):
    ...
    ValueError: `config.total_steps` must be an integer >= 1, got 0.
    """
    from keras_scalevit.utils import validation as v

    if not hasattr(config, "keys") or not hasattr(config, "__getitem__"):
        raise TypeError(
            "`config` must be an ml_collections.ConfigDict (or a dict), got "
            f"{type(config).__name__}."
        )
    _check_fields("config", config, CONFIG_FIELDS)
    for key in ("input", "model", "num_classes", "loss", "lr"):
        if _field(config, key) is None:
            raise ValueError(f"The config needs `config.{key}`.")
    inp = config["input"]
    _check_fields("config.input", inp, INPUT_FIELDS)
    data = _field(inp, "data")
    if data is None or not isinstance(_field(data, "name"), str):
        raise ValueError(
            "The config needs `config.input.data.name`, a TFDS data set name."
        )
    if not isinstance(_field(data, "split"), str):
        raise TypeError(
            "`config.input.data.split` must be a TFDS split string such as "
            f"'train', got {_field(data, 'split')!r}."
        )
    pp = _field(inp, "pp")
    if not isinstance(pp, str) or not pp.strip():
        raise TypeError(f"`config.input.pp` must be a non-empty pp string, got {pp!r}.")
    v.check_positive_int("config.input.batch_size", _field(inp, "batch_size"))
    if _field(inp, "shuffle_buffer_size") is not None:
        v.check_positive_int(
            "config.input.shuffle_buffer_size", inp["shuffle_buffer_size"]
        )
    cache = _field(inp, "cache")
    if cache is not None and not isinstance(cache, (bool, str)):
        raise TypeError(
            f"`config.input.cache` must be True, False or a path, got {cache!r}."
        )

    steps, epochs = _field(config, "total_steps"), _field(config, "total_epochs")
    if steps is None and epochs is None:
        raise ValueError("The config needs `config.total_steps` or `total_epochs`.")
    if steps is not None:
        v.check_positive_int("config.total_steps", steps)
    else:
        v.check_positive_float("config.total_epochs", epochs)
    v.check_int("config.seed", _field(config, "seed") or 0)
    for key in ("log_training_steps", "ckpt_steps"):
        if _field(config, key) is not None:
            v.check_int(f"config.{key}", config[key], minimum=0)
    if _field(config, "verbose") is not None:
        v.check_choice("config.verbose", config["verbose"], (0, 1, 2, "auto"))
    if _field(config, "jit_compile") is not None:
        v.check_bool("config.jit_compile", config["jit_compile"])
    v.check_choice("config.model_name", _field(config, "model_name") or "vit", ("vit",))
    v.check_positive_int("config.num_classes", config["num_classes"])
    size = _field(config, "image_size")
    if size is not None:
        sizes = list(size) if isinstance(size, (list, tuple)) else [size]
        if len(sizes) not in (1, 2):
            raise ValueError(
                "`config.image_size` must be an integer or an (height, width) pair, "
                f"got {size!r}."
            )
        for n in sizes:
            v.check_positive_int("config.image_size", n)
    v.check_float("config.init_head_bias", _field(config, "init_head_bias") or 0.0)
    loss = config["loss"]
    if not isinstance(loss, str):
        raise TypeError(f"`config.loss` must be a loss name, got {loss!r}.")
    from keras_scalevit import losses

    try:
        losses.get(loss)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "`config.loss` must be 'sigmoid_xent', 'softmax_xent' or a Keras loss "
            f"name, got {loss!r}."
        ) from e
    v.check_positive_float("config.lr", config["lr"])
    if _field(config, "wd") is not None:
        v.check_non_negative_float("config.wd", config["wd"])
    if _field(config, "grad_clip_norm") is not None:
        v.check_positive_float("config.grad_clip_norm", config["grad_clip_norm"])
    if _field(config, "ema_momentum") is not None:
        v.check_probability("config.ema_momentum", config["ema_momentum"])
    mixup_p = _field(_field(config, "mixup"), "p")
    if mixup_p is not None:  # Beta(p, p) concentration; 0 (or None) is off
        v.check_non_negative_float("config.mixup.p", mixup_p)
    evals = _field(config, "evals")
    val = _field(evals, "val") if evals is not None else None
    if val:
        if (_field(val, "type") or "classification") != "classification":
            raise ValueError(
                "`config.evals.val.type` must be 'classification', got "
                f"{val['type']!r}."
            )
        if not isinstance(_field(val, "pp_fn"), str) or not val["pp_fn"]:
            raise ValueError(
                "`config.evals.val` needs `pp_fn`, the evaluation pp string (the "
                "training pp string has random augmentations)."
            )
        for key in ("log_steps", "batch_size"):
            if _field(val, key):
                v.check_positive_int(f"config.evals.val.{key}", val[key])


def build_model(config, image_size=None):
    """The model a config describes (``config.model`` or ``config.model_init``).

    Example:
    >>> from keras_scalevit.configs import digits
    >>> from keras_scalevit.train import build_model
    >>> model = build_model(digits.get_config())
    >>> model.input_shape, model.output_shape
    ((None, 8, 8, 3), (None, 10))
    """
    image_size = image_size or image_size_from_config(config)
    model_name = _get(config, "model_name", "vit")
    if model_name != "vit":
        raise ValueError(f"Unsupported config.model_name={model_name!r}; use 'vit'.")
    head_bias = float(_get(config, "init_head_bias", 0.0))
    model_init = _get(config, "model_init")
    if model_init:
        from keras_scalevit import transfer  # lazy: optional module

        # config.model (variant, pool_type, dropout, ...; checked against or
        # applied to the initial model) plus big_vision's config.model_load
        # (e.g. dont_load=["head/kernel", "head/bias"]).
        kwargs = {
            k: v for k, v in _to_dict(_get(config, "model")).items() if v is not None
        }
        kwargs.update(_to_dict(_get(config, "model_load")))
        return transfer.build_transfer_model(
            model_init,
            image_size=image_size,
            num_classes=config.num_classes,
            head_bias_init=head_bias,
            **kwargs,
        )
    from keras_scalevit.models import ViTClassifier

    kwargs = _to_dict(config.model)
    variant = kwargs.pop("variant")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return ViTClassifier.from_variant(
        variant,
        num_classes=config.num_classes,
        image_size=image_size,
        head_bias_init=head_bias,
        name="vit",
        **kwargs,
    )


def build_optimizer(config, total_steps, data_size=None):
    """The optimizer a big_vision config describes (``optax_name``, ``lr``, ...).

    Adds Polyak averaging when ``config.ema_momentum`` is set.

    Example:
    >>> from keras_scalevit.configs import digits
    >>> from keras_scalevit.train import build_optimizer
    >>> optimizer = build_optimizer(digits.get_config(), total_steps=100)
    >>> type(optimizer).__name__, optimizer.global_clipnorm
    ('Adafactor', 1.0)
    """
    from keras_scalevit.optimizers import from_big_vision_config

    kwargs = {}
    if _get(config, "ema_momentum") is not None:  # Polyak averaging (fine-tuning)
        from keras_scalevit.transfer import ema_optimizer_kwargs

        kwargs = ema_optimizer_kwargs(config)
    return from_big_vision_config(
        config,
        total_steps=total_steps,
        batch_size=config.input.batch_size,
        data_size=data_size,
        **kwargs,
    )


# ---------------------------------------------------------------- checkpoints


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
    >>> from keras_scalevit.train import build_optimizer, run_fingerprint
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
            "resolved.jit_compile": _jit_compile(config),
            "optimizer.class": type(optimizer).__name__,
        }
    )
    opt_config = {k: v for k, v in optimizer.get_config().items() if k != "name"}
    fp.update(_flatten(opt_config, "optimizer", {}))
    return fp


def _jit_compile(config):
    return bool(
        _get(config, "jit_compile", keras.backend.backend() in ("jax", "tensorflow"))
    )


def _variable_table(variables, strip_scope=False):
    # The optimizer's scope is its (process-unique) name, e.g. "adafactor_1".
    def name(v):
        return v.path.split("/", 1)[-1] if strip_scope else v.path

    return [[name(v), list(v.shape), str(v.dtype)] for v in variables]


def save_checkpoint(path, model, step, fingerprint):
    """Writes model + optimizer variables and ``step`` atomically to ``path``.

    Example:

    A round trip through `restore_checkpoint` (the model must be compiled and
    its optimizer built).
    >>> import os, tempfile
    >>> import numpy as np, keras
    >>> from keras_scalevit.train import restore_checkpoint, save_checkpoint
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
    for group, variables in (
        ("model", model.variables),
        ("optimizer", model.optimizer.variables),
    ):
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
    >>> from keras_scalevit.train import fingerprint_diff
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
    >>> from keras_scalevit.train import CheckpointError, check_fingerprint
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
    >>> from keras_scalevit.train import read_checkpoint_meta, save_checkpoint
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


def remove_stale_temp_files(path):
    """Deletes ``<path>.tmp-<pid>`` files left by saves that were killed.

    Returns the removed paths. Only one run may use a workdir at a time.

    Example:
    >>> import os, tempfile
    >>> from keras_scalevit.train import remove_stale_temp_files
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.npz")
    >>> open(path + ".tmp-12345", "wb").close()
    >>> [os.path.basename(p) for p in remove_stale_temp_files(path)]
    ['checkpoint.npz.tmp-12345']
    """
    import glob

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
    >>> from keras_scalevit.train import (
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
    meta, arrays = _read(path)
    check_fingerprint(path, meta.get("fingerprint", {}), fingerprint)
    values = []
    for group, variables in (
        ("model", model.variables),
        ("optimizer", model.optimizer.variables),
    ):
        table = _variable_table(variables, group == "optimizer")
        saved_table = meta.get(group)
        if saved_table is None or len(saved_table) != len(table):
            raise _mismatch(
                path,
                f"{group} has {len(table)} variables, the checkpoint "
                f"{None if saved_table is None else len(saved_table)}",
            )
        for i, (v, mine, theirs) in enumerate(
            zip(variables, table, saved_table, strict=True)
        ):
            if mine != theirs:
                raise _mismatch(
                    path, f"{group} variable {i} is {mine}, checkpoint has {theirs}"
                )
            key = f"{group}/{i}"
            if key not in arrays:
                raise CheckpointError(f"Checkpoint {path} is corrupt: no {key!r}.")
            a = arrays[key]
            if theirs[2] == "bfloat16" and a.dtype == np.uint16:
                import ml_dtypes

                a = a.view(ml_dtypes.bfloat16)
            if list(a.shape) != mine[1]:
                raise CheckpointError(
                    f"Checkpoint {path} is corrupt: {key} ({mine[0]}) has shape "
                    f"{list(a.shape)}, its table says {mine[1]}."
                )
            values.append((v, a))
    for v, a in values:
        v.assign(a)
    return int(meta["step"])


# ---------------------------------------------------------------- callbacks


def _floats(logs):
    out = {}
    for k, v in (logs or {}).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


class _JsonLines:
    def __init__(self, path):
        self.path = path

    def write(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step):
        """Drops records past ``step`` (a resumed run rewrites them)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        keep = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("step", 0) <= step and not record.get("final"):
                keep.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)


class TrainLoop(keras.callbacks.Callback):
    """Counts optimizer steps, logs, checkpoints and stops at ``total_steps``.

    Training lines are written every ``log_steps`` steps from Keras' logs and a
    host-side schedule. Checkpoints are written at the end of a progress-bar epoch
    (``main`` makes every ``ckpt_steps`` multiple an epoch boundary), after that
    epoch's validation and few-shot record, so a resumed run repeats exactly the
    epochs, evaluations and running means of an uninterrupted one.

    Example:
    >>> import os, tempfile
    >>> import numpy as np, keras
    >>> from keras_scalevit.train import TrainLoop
    >>> class Records(list):
    ...     write = list.append
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> records = Records()
    >>> loop = TrainLoop(
    ...     start_step=0, total_steps=3, log_steps=1, ckpt_steps=None,
    ...     ckpt_path=os.path.join(tempfile.mkdtemp(), "checkpoint.npz"),
    ...     fingerprint={}, writer=records)
    >>> x, y = np.ones((8, 4), "float32"), np.zeros((8, 2), "float32")
    >>> _ = model.fit(x, y, batch_size=2, epochs=5, callbacks=[loop], verbose=0)
    >>> loop.step, [r["step"] for r in records]
    (3, [1, 2, 3])
    >>> os.path.exists(loop.ckpt_path)
    True
    """

    def __init__(
        self,
        *,
        start_step,
        total_steps,
        log_steps,
        ckpt_steps,
        ckpt_path,
        fingerprint,
        writer,
        lr_fn=None,
        examples_per_step=None,
    ):
        super().__init__()
        self.step = int(start_step)
        self.total_steps = int(total_steps)
        self.log_steps = log_steps
        self.ckpt_steps = ckpt_steps
        self.ckpt_path = ckpt_path
        self.fingerprint = fingerprint
        self.writer = writer
        self.lr_fn = lr_fn
        self.examples_per_step = examples_per_step
        self._t0 = None

    def on_train_begin(self, logs=None):
        self._t0 = time.time()

    def save(self):
        """Writes the checkpoint now (`save_checkpoint` at the current ``step``).

        Example:
        >>> import os, tempfile
        >>> import keras
        >>> from keras_scalevit.train import TrainLoop, restore_checkpoint
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> model.optimizer.build(model.trainable_variables)
        >>> loop = TrainLoop(
        ...     start_step=5, total_steps=10, log_steps=None, ckpt_steps=None,
        ...     ckpt_path=os.path.join(tempfile.mkdtemp(), "checkpoint.npz"),
        ...     fingerprint={}, writer=None)
        >>> loop.set_model(model)
        >>> loop.save()
        >>> restore_checkpoint(loop.ckpt_path, model, fingerprint={})
        5
        """
        save_checkpoint(self.ckpt_path, self.model, self.step, self.fingerprint)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        done = self.step >= self.total_steps
        if done or (self.log_steps and self.step % self.log_steps == 0):
            record = {"step": self.step, **_floats(logs)}
            if self.lr_fn is not None:
                record["lr"] = self.lr_fn(self.step - 1)  # the rate of this update
            if self.examples_per_step:
                record["examples_seen"] = self.step * self.examples_per_step
            record["wall_s"] = round(time.time() - self._t0, 3)
            self.writer.write(record)
        if done:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        record = {"step": self.step, "epoch": epoch + 1}
        record.update(
            {k: v for k, v in _floats(logs).items() if "/" in k or "val_" in k}
        )
        if len(record) > 2:
            self.writer.write(record)
        done = self.step >= self.total_steps
        if done or (self.ckpt_steps and self.step % self.ckpt_steps == 0):
            self.save()


# ---------------------------------------------------------------- plotting


def plot_metrics(metrics_path, png_path):
    """Plots loss, prec@1 and learning rate from ``metrics.jsonl`` (Agg).

    Example:
    >>> import json, os, tempfile
    >>> from keras_scalevit.train import plot_metrics
    >>> workdir = tempfile.mkdtemp()
    >>> metrics = os.path.join(workdir, "metrics.jsonl")
    >>> with open(metrics, "w") as f:
    ...     for step in (1, 2, 3):
    ...         record = {"step": step, "loss": 1.0 / step, "prec@1": 0.3 * step,
    ...                   "lr": 0.01}
    ...         print(json.dumps(record), file=f)
    >>> plot_metrics(metrics, os.path.join(workdir, "curves.png"))
    >>> os.path.getsize(os.path.join(workdir, "curves.png")) > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = []
    with open(metrics_path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue

    def series(key):
        pts = [(r["step"], r[key]) for r in records if key in r and "step" in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("loss", "val_loss"):
        axes[0].plot(*series(key), label=key, marker="." if "val" in key else None)
    axes[0].set_yscale("log")
    fewshot_keys = sorted({k for r in records for k in r if k.startswith("fewshot/")})
    for key in ("prec@1", "val_prec@1", *fewshot_keys):
        xs, ys = series(key)
        if xs:
            axes[1].plot(xs, ys, label=key, marker="." if key != "prec@1" else None)
    axes[2].plot(*series("lr"), label="lr")
    for ax, title in zip(axes, ("loss", "accuracy", "learning rate"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- main


def _first_group_lr(config, optimizer):
    """Host-side ``lr * schedule(step)`` of the first variable group, for logs."""
    lr = float(config.lr)
    # The first group that trains (a `None` schedule entry freezes its group).
    trained = [s for s in getattr(optimizer, "group_schedules", None) or () if s]
    if not trained:
        return lambda step: lr
    schedule = trained[0]
    return lambda step: lr * float(keras.ops.convert_to_numpy(schedule(step)))


def _val_pp(val_cfg):
    pp = val_cfg.get("pp_fn")
    if not pp:
        raise ValueError(
            "config.evals.val needs `pp_fn`, the evaluation pp string (the training "
            "pp string has random augmentations)."
        )
    return pp


def _finished_record(metrics_path, total_steps):
    """The ``"final": true`` record of ``metrics.jsonl`` at ``total_steps``, or None."""
    try:
        with open(metrics_path) as f:
            lines = f.readlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("final"):
            return record if record.get("step") == total_steps else None
    return None


def main(config, workdir):
    """Trains (or resumes) the run ``config`` describes in ``workdir``.

    Args:
        config: ``ml_collections.ConfigDict`` (see ``configs/digits.py``).
        workdir: directory for checkpoints, metrics, plot and final model.

    Returns:
        dict of final metrics (``val_prec@1``, ``val_loss``, few-shot numbers,
        ``step``).

    Example:

    The digits config for two steps (builds the digits set offline into
    ``data_dir``; skipped in the doctests, it takes 10-20 s).
    >>> import os, tempfile
    >>> from keras_scalevit import train
    >>> from keras_scalevit.configs import digits
    >>> config = digits.get_config()
    >>> config.total_steps, config.ckpt_steps, config.verbose = 2, 0, 0
    >>> config.evals = None
    >>> workdir = tempfile.mkdtemp()
    >>> config.input.data.data_dir = os.path.join(workdir, "tfds")
    >>> final = train.main(config, workdir)  # doctest: +SKIP
    >>> final["step"]  # doctest: +SKIP
    2
    """
    import keras_scalevit.data as kdata
    from keras_scalevit import losses

    validate_config(config)
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
        raise TypeError(f"`workdir` must be a directory path, got {workdir!r}.")
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    ckpt_path = os.path.join(workdir, CHECKPOINT_NAME)
    for tmp in remove_stale_temp_files(ckpt_path):
        print(f"Removed {tmp}, left by a save that was interrupted.")
    seed = int(_get(config, "seed", 0))
    data = config.input.data
    data_dir = _get(data, "data_dir")
    batch_size = int(config.input.batch_size)
    num_train = kdata.get_num_examples(data.name, data.split, data_dir=data_dir)
    total_steps = total_steps_from_config(config, num_train)
    image_size = image_size_from_config(config)
    loss = losses.get(config.loss)

    # The optimizer (no variables yet) is all the fingerprint needs: a checkpoint
    # from another configuration is refused before anything is built or written.
    optimizer = build_optimizer(config, total_steps, data_size=num_train)
    fingerprint = run_fingerprint(
        config, optimizer, image_size=image_size, total_steps=total_steps
    )
    writer = _JsonLines(os.path.join(workdir, METRICS_NAME))
    meta = None
    if os.path.exists(ckpt_path):
        meta = read_checkpoint_meta(ckpt_path)
        check_fingerprint(ckpt_path, meta.get("fingerprint", {}), fingerprint)
        recorded = _finished_record(writer.path, total_steps)
        if (
            int(meta.get("step", -1)) >= total_steps
            and recorded is not None
            and os.path.exists(os.path.join(workdir, MODEL_NAME))
        ):
            print(
                f"The run in {workdir} is finished (step {total_steps}); nothing "
                "to do. Its results are in metrics.jsonl and model.keras; use a new "
                "--workdir to train again."
            )
            return recorded

    log_steps = int(_get(config, "log_training_steps", 50))
    ckpt_steps = int(_get(config, "ckpt_steps", 0)) or None
    evals = _to_dict(_get(config, "evals"))
    val_cfg = evals.get("val") or {}
    val_steps = int(val_cfg.get("log_steps") or 0) or None
    # One progress-bar epoch divides both the validation and the checkpoint
    # cadence: checkpoints then sit on epoch boundaries, and a resumed run walks
    # through the same epochs (running means, validations) as an uninterrupted one.
    steps_per_epoch = math.gcd(val_steps or 0, ckpt_steps or 0) or min(
        total_steps, 1000
    )
    saved_step = 0 if meta is None else int(meta.get("step", 0))
    if 0 < saved_step < total_steps:
        # A resume under a changed cadence: the checkpoint's step must be an
        # epoch boundary too. (Only the logged running means see the shorter
        # epochs; the weights do not depend on them.)
        steps_per_epoch = math.gcd(steps_per_epoch, saved_step)
    steps_per_epoch = max(1, min(steps_per_epoch, total_steps))
    epochs = math.ceil(total_steps / steps_per_epoch)

    keras.utils.set_random_seed(seed)
    model = build_model(config, image_size)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[keras.metrics.CategoricalAccuracy(name="prec@1")],
        jit_compile=_jit_compile(config),
    )
    optimizer.build(model.trainable_variables)

    start_step = 0
    if meta is not None:
        start_step = restore_checkpoint(ckpt_path, model, fingerprint)
        print(f"Resumed from {ckpt_path} at step {start_step}/{total_steps}.")
        writer.truncate_after(start_step)
    elif os.path.exists(writer.path):
        os.remove(writer.path)  # a run killed before its first checkpoint
    # Only now, with the checkpoint (if any) accepted: the config of this run.
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(_to_dict(config), f, indent=2, sort_keys=True, default=str)

    val_ds = None
    if val_cfg:
        val_data = val_cfg.get("data") or {}
        val_ds = kdata.make_eval_dataset(
            val_data.get("name", data.name),
            val_data.get("split", "test"),
            _val_pp(val_cfg),
            int(val_cfg.get("batch_size") or batch_size),
            data_dir=val_data.get("data_dir", data_dir),
            cache=bool(val_cfg.get("cache", False)),
        )
        # The pipeline's cardinality is unknown to tf.data; state it so Keras does
        # not warn that the validation "input ran out of data".
        val_batches = math.ceil(
            kdata.get_num_examples(
                val_data.get("name", data.name),
                val_data.get("split", "test"),
                data_dir=val_data.get("data_dir", data_dir),
            )
            / int(val_cfg.get("batch_size") or batch_size)
        )
        import tensorflow as tf

        val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(val_batches))

    callbacks = [
        TrainLoop(
            start_step=start_step,
            total_steps=total_steps,
            log_steps=log_steps,
            ckpt_steps=ckpt_steps,
            ckpt_path=ckpt_path,
            fingerprint=fingerprint,
            writer=writer,
            lr_fn=_first_group_lr(config, optimizer),
            examples_per_step=batch_size,
        )
    ]
    fewshot_cfg = evals.get("fewshot")
    fewshot_cb = None
    if fewshot_cfg:
        from keras_scalevit.evaluation import FewShotEvaluator

        fewshot_cfg = dict(fewshot_cfg)
        fewshot_cfg.setdefault("data_dir", data_dir)
        for tfds_name, *_ in fewshot_cfg.get("datasets", {}).values():
            kdata.get_builder(tfds_name, fewshot_cfg["data_dir"])  # prepare digits
        fewshot_cb = FewShotEvaluator.from_config(
            fewshot_cfg, pp_builder=kdata.get_preprocess_fn
        )
        callbacks.insert(0, fewshot_cb)

    t0 = time.time()
    trained = start_step < total_steps
    if trained:
        train_ds = kdata.make_dataset(
            data.name,
            data.split,
            config.input.pp,
            batch_size,
            data_dir=data_dir,
            seed=seed,
            shuffle_buffer=int(_get(config.input, "shuffle_buffer_size", 50_000)),
            cache=_get(config.input, "cache", False),
            start_batch=start_step,
            mixup_p=_get(_get(config, "mixup"), "p") or None,
        )
        val_freq = (val_steps or steps_per_epoch) // steps_per_epoch
        model.fit(
            train_ds,
            epochs=epochs,
            initial_epoch=start_step // steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            validation_data=val_ds,
            validation_freq=val_freq,
            verbose=_get(config, "verbose", 1),
            shuffle=False,  # make_dataset shuffles (seeded, resumable)
        )
    else:  # killed after its last checkpoint: evaluate and write the results
        if getattr(optimizer, "use_ema", False):
            # `fit` writes the Polyak averages into the model at its end; the
            # checkpoint holds the raw weights and the averages.
            optimizer.finalize_variable_values(model.trainable_variables)
        if fewshot_cb is not None:
            fewshot_cb.set_model(model)
            fewshot_cb.on_train_begin()
            fewshot_cb.on_train_end()
    if getattr(optimizer, "use_ema", False):
        # finalize_variable_values makes each weight share its buffer with the
        # average; on JAX a later compiled call donates the weight's buffer and
        # leaves the optimizer's average deleted. Give the weights their own copy.
        for v in model.trainable_variables:
            v.assign(keras.ops.copy(v.value))
    train_wall = time.time() - t0

    final = {"step": start_step if start_step >= total_steps else total_steps}
    if val_ds is not None:
        results = model.evaluate(val_ds, return_dict=True, verbose=0)
        final.update({f"val_{k}": float(v) for k, v in results.items()})
    if fewshot_cb is not None and fewshot_cb.history:
        results = fewshot_cb._loggable(fewshot_cb.history[-1]["results"])
        final.update({k: float(v) for k, v in results.items() if np.isscalar(v)})
    final["final"] = True
    if trained:  # this process's training time (from the restart, if resumed)
        final["train_wall_s"] = round(train_wall, 2)
    writer.write(final)
    model.save(os.path.join(workdir, MODEL_NAME))
    plot_metrics(writer.path, os.path.join(workdir, PLOT_NAME))
    msg = ", ".join(f"{k}={v:.4f}" for k, v in final.items() if isinstance(v, float))
    print(f"Final (step {final['step']}): {msg}")
    if "val_prec@1" in final:
        print(f"Final test accuracy: {final['val_prec@1']:.4f}")
    return final
