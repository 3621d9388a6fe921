"""Translate a big_vision optimizer config (``optax.make``'s keys) into our optimizers."""

import difflib

from keras_scalevit.optimizers.adafactor import Adafactor
from keras_scalevit.optimizers.momentum_hp import MomentumHP
from keras_scalevit.utils.validation import (
    check_non_negative_float,
    check_positive_int,
)

# big_vision's optax keyword -> our keyword, per optimizer.
_ADAFACTOR_KEYS = {
    "min_dim_size_to_factor": "min_dim_size_to_factor",
    "decay_rate": "decay_rate",
    "decay_offset": "decay_offset",
    "beta2_cap": "beta2_cap",
    "clipping_threshold": "clipping_threshold",
    "momentum": "momentum",
    "dtype_momentum": "momentum_dtype",
    "eps": "epsilon",
}
_MOMENTUM_HP_KEYS = {
    "momentum": "momentum",
    "dtype": "momentum_dtype",
    "nesterov": "nesterov",
}
_OPTIMIZERS = {
    "big_vision.scale_by_adafactor": (Adafactor, _ADAFACTOR_KEYS),
    "big_vision.momentum_hp": (MomentumHP, _MOMENTUM_HP_KEYS),
    "big_vision.sgd": (MomentumHP, {}),
}


def _dtype_name(dtype):
    # big_vision configs may hold a jnp dtype (jnp.bfloat16) or a string.
    return getattr(dtype, "__name__", None) or getattr(dtype, "name", None) or dtype


def from_big_vision_config(
    config, *, total_steps, batch_size=None, data_size=None, **kwargs
):
    """Builds the optimizer a big_vision config describes, with identical math.

    Reads ``optax_name``, ``optax``, ``lr``, ``wd``, ``wd_mults``, ``lr_mults``,
    ``schedule`` and ``grad_clip_norm`` (other keys of a training config are ignored)
    and maps them as follows:

    - ``optax_name``: ``big_vision.scale_by_adafactor`` -> `Adafactor`
      (``dtype_momentum`` -> ``momentum_dtype``, ``eps`` -> ``epsilon``),
      ``big_vision.momentum_hp`` -> `MomentumHP` (``dtype`` -> ``momentum_dtype``),
      ``big_vision.sgd`` -> `MomentumHP` without momentum;
    - ``lr`` -> ``learning_rate`` (a float; the schedule multiplies it);
    - ``wd`` -> ``weight_decay = wd / lr`` (big_vision's decay is not multiplied by
      ``lr``, ours is), ``wd_mults`` -> ``weight_decay_multipliers`` (big_vision's
      default ``[(".*/kernel$", 1.0)]`` when absent);
    - ``lr_mults`` -> ``learning_rate_multipliers``;
    - ``schedule`` (dict or list of ``(pattern, dict or None)``; default ``{}``, a
      constant 1) -> ``schedule`` with ``schedule_kwargs`` = big_vision's ``sched_kw``;
    - ``grad_clip_norm`` -> ``global_clipnorm`` (norm over non-frozen gradients).

    Args:
        config: dict or ``ml_collections.ConfigDict``.
        total_steps: int. Training length (big_vision's ``sched_kw``).
        batch_size: int or None. For ``_examples``/``_epochs`` schedule keywords.
        data_size: int or None. For ``_epochs`` schedule keywords.
        **kwargs: further optimizer arguments (e.g. ``use_ema``, ``name``).

    Returns:
        An `Adafactor` or `MomentumHP`.

    Example:
    >>> from keras_scalevit.optimizers import from_big_vision_config
    >>> opt = from_big_vision_config(dict(
    ...     optax_name="big_vision.scale_by_adafactor", lr=8e-4, wd=0.03 * 8e-4,
    ...     wd_mults=[(".*head/kernel", 100.0), (".*/kernel", 1.0)],
    ...     schedule=dict(decay_type="rsqrt", timescale=10_000, warmup_steps=10_000,
    ...                   cooldown_steps=50_000),
    ...     grad_clip_norm=1.0), total_steps=1_000_000)
    >>> type(opt).__name__, round(opt.weight_decay, 6), opt.global_clipnorm
    ('Adafactor', 0.03, 1.0)
    """
    if not hasattr(config, "get"):
        raise TypeError(
            f"`config` must be a dict or ConfigDict, got {type(config).__name__}."
        )
    total_steps = check_positive_int("total_steps", total_steps)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    if data_size is not None:
        data_size = check_positive_int("data_size", data_size)
    name = config.get("optax_name")
    if name not in _OPTIMIZERS:
        close = difflib.get_close_matches(str(name), list(_OPTIMIZERS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"`optax_name` must be one of {sorted(_OPTIMIZERS)}, got {name!r}{hint}."
        )
    if config.get("grad_clip_per_example"):
        raise ValueError(
            "`grad_clip_per_example` (per-example gradient clipping) is not supported; "
            f"received grad_clip_per_example={config.get('grad_clip_per_example')!r}."
        )
    cls, key_map = _OPTIMIZERS[name]
    optimizer_kwargs = {}
    for key, value in dict(config.get("optax") or {}).items():
        if key not in key_map:
            close = difflib.get_close_matches(key, list(key_map), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"Unsupported `optax` keyword {key!r} for {name!r}{hint}; supported: "
                f"{sorted(key_map)}."
            )
        if key in ("dtype_momentum", "dtype"):
            value = _dtype_name(value)
        optimizer_kwargs[key_map[key]] = value
    if name == "big_vision.sgd":
        optimizer_kwargs["momentum"] = None
    lr = config.get("lr")
    if lr is None:
        raise ValueError(
            "The config needs `lr` (big_vision's learning rate); received None."
        )
    lr = check_non_negative_float("lr", lr)
    wd = config.get("wd")
    if wd is not None:
        wd = check_non_negative_float("wd", wd)
    if wd:
        if lr == 0:
            raise ValueError(
                f"Cannot express wd={wd!r} relative to lr=0 (weight_decay = wd / lr)."
            )
        optimizer_kwargs["weight_decay"] = wd / lr
        wd_mults = config.get("wd_mults")
        if wd_mults is not None:
            optimizer_kwargs["weight_decay_multipliers"] = [tuple(r) for r in wd_mults]
    if config.get("lr_mults"):
        optimizer_kwargs["learning_rate_multipliers"] = [
            tuple(r) for r in config.get("lr_mults")
        ]
    schedule = config.get("schedule", {})
    if isinstance(schedule, (list, tuple)):
        schedule = [(p, None if s is None else dict(s)) for p, s in schedule]
    else:
        schedule = dict(schedule)
    clip = config.get("grad_clip_norm")
    if clip is not None:
        # big_vision: 0 (or None) means no clipping.
        clip = check_non_negative_float("grad_clip_norm", clip)
    if clip:
        optimizer_kwargs["global_clipnorm"] = clip
    schedule_kwargs = {"total_steps": total_steps}
    if batch_size is not None:
        schedule_kwargs["batch_size"] = batch_size
    if data_size is not None:
        schedule_kwargs["data_size"] = data_size
    optimizer_kwargs.update(kwargs)
    return cls(
        lr,
        schedule=schedule,
        schedule_kwargs=schedule_kwargs,
        **optimizer_kwargs,
    )
