"""Reading a training config: sizes, steps, validation, the model and optimizer."""

import difflib
import re

import keras

# pp ops whose first argument fixes the output image size (last one wins).
_SIZE_OPS = (
    "resize",
    "central_crop",
    "random_crop",
    "inception_crop",
    "decode_jpeg_and_inception_crop",
)


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
    >>> from keras_scalevit.training import image_size_from_config
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
    >>> from keras_scalevit.training import total_steps_from_config
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
    >>> from keras_scalevit.training import validate_config
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
        # 0 means no clipping, as in big_vision (and `from_big_vision_config`).
        v.check_non_negative_float("config.grad_clip_norm", config["grad_clip_norm"])
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
    from keras_scalevit.training.mesh import mesh_settings

    mesh_settings(config)  # config.mesh: known strategy, (data, model) ints, JAX


def build_model(config, image_size=None):
    """The model a config describes (``config.model`` or ``config.model_init``).

    Example:
    >>> from keras_scalevit.configs import digits
    >>> from keras_scalevit.training import build_model
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
    >>> from keras_scalevit.training import build_optimizer
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


def jit_compile(config):
    """``config.jit_compile``, or Keras' default for the backend (XLA on JAX and TF)."""
    return bool(
        _get(config, "jit_compile", keras.backend.backend() in ("jax", "tensorflow"))
    )
