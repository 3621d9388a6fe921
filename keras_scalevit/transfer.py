"""Fine-tuning (transfer): a pre-trained ViT rebuilt at a new resolution and head.

big_vision's transfer recipe (``configs/transfer.py``, the paper's fine-tuning) loads
a pre-trained checkpoint into a model built for the downstream task: every body
weight is copied, a learned position embedding of another grid is resampled with
`resample_posemb` (corner-aligned linear interpolation, spec §1.7), and the
classification head starts from zeros (``dont_load=['head/kernel', 'head/bias']``).
`build_transfer_model` does this from a big_vision ``.npz``, a mapping of big_vision
names, a saved Keras ``.keras`` model or an in-memory model.

Polyak averaging: big_vision's trainer has none (spec §8); the paper fine-tunes its
largest models with Polyak averaging (paper-only, its momentum is not in any
big_vision config). Keras optimizers (including `MomentumHP` and `Adafactor`) keep
an exponential moving average of the weights with ``use_ema=True`` and
``ema_momentum=m``; `ema_optimizer_kwargs` turns a config's ``ema_momentum`` into
those arguments, and ``optimizer.finalize_variable_values(model.trainable_variables)``
(called by ``model.fit`` at its end) writes the averages into the model.
"""

import os
import re
from collections.abc import Mapping

import keras
import numpy as np

from keras_scalevit.convert.big_vision import (
    from_big_vision,
    infer_config,
    normalize_checkpoint,
    to_big_vision,
)
from keras_scalevit.models.vit.vit_backbone import ViTBackbone
from keras_scalevit.models.vit.vit_classifier import POOL_TYPES, ViTClassifier
from keras_scalevit.models.vit.vit_layers import _pair
from keras_scalevit.models.vit.vit_variants import decode_variant
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_kwargs,
    check_probability,
)

_HEAD_KEYS = ("head/kernel", "head/bias")
# Arguments that configure the rebuilt model rather than describe the checkpoint.
_BACKBONE_OPTIONS = ("dropout", "remat", "dtype", "flash_attention")
# Arguments checked against the initial model (e.g. a training config's `model`).
_CHECKED_OPTIONS = (
    "variant",
    "posemb",
    "rep_size",
    "width",
    "depth",
    "num_heads",
    "mlp_dim",
    "patch_size",
)
_SHAPE_OPTIONS = ("width", "depth", "num_heads", "mlp_dim", "patch_size")
_OWN_ARGUMENTS = (
    "init",
    "image_size",
    "num_classes",
    "pool_type",
    "head_bias_init",
    "head_zeroinit",
    "reset_head",
    "dont_load",
)


def _check_image_size(image_size):
    if image_size is None:
        return None
    return _pair(image_size, "image_size")


def _split_path(path):
    """Returns ``(file, subtree or None)`` for ``file.npz:subtree`` paths."""
    m = re.fullmatch(r"(.*?\.npz):([\w/]+)", path)
    return (m.group(1), m.group(2)) if m else (path, None)


def _load_keras_model(path):
    import keras_scalevit  # noqa: F401  (registers the serializable classes)

    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    if not isinstance(model, (ViTClassifier, ViTBackbone)):
        raise ValueError(
            f"`init`={path!r} holds a {type(model).__name__}, not a keras-scalevit "
            "ViTClassifier or ViTBackbone."
        )
    return model


def _resolve_init(init):
    """Returns ``("params", dict)`` or ``("model", keras model)`` for `init`."""
    if isinstance(init, (ViTClassifier, ViTBackbone)):
        return "model", init
    if isinstance(init, keras.Model):
        raise TypeError(
            f"`init` is a {type(init).__name__}; build_transfer_model takes a "
            "keras-scalevit ViTClassifier or ViTBackbone, a .npz or .keras path, or "
            "a mapping of big_vision names to arrays."
        )
    if isinstance(init, Mapping):
        return "params", normalize_checkpoint(dict(init))
    if isinstance(init, (str, os.PathLike)):
        path = os.fspath(init)
        file, subtree = _split_path(path)
        if not os.path.exists(file):
            raise FileNotFoundError(f"`init`={path!r}: no such file {file!r}.")
        if file.endswith(".npz"):
            return "params", normalize_checkpoint(path)
        if file.endswith(".keras"):
            return "model", _load_keras_model(file)
        raise ValueError(
            f"`init`={path!r} has an unknown file type: expected a big_vision "
            "checkpoint '.npz' (optionally 'file.npz:subtree') or a saved Keras "
            "model '.keras'."
        )
    raise TypeError(
        "`init` must be a .npz or .keras path, a mapping of big_vision names to "
        "arrays, or a ViTClassifier / ViTBackbone; received "
        f"{type(init).__name__}."
    )


def _check_against_checkpoint(cfg, variant, posemb, rep_size, shape):
    """Raises if the model arguments of a config disagree with the checkpoint."""
    want = dict(decode_variant(variant)) if variant is not None else {}
    want.update(shape)  # explicit overrides of the variant, as ViTBackbone's
    if want.get("mlp_dim") is None and "width" in want:
        want["mlp_dim"] = 4 * want["width"]
    if "patch_size" in want and not isinstance(want["patch_size"], (tuple, list)):
        want["patch_size"] = (want["patch_size"], want["patch_size"])
    if "patch_size" in want:
        want["patch_size"] = tuple(want["patch_size"])
    diff = {
        k: (want[k], cfg[k])
        for k in _SHAPE_OPTIONS
        if want.get(k) is not None and want[k] != cfg[k]
    }
    if diff:
        what = f"`variant`={variant!r}" if variant is not None else "The model shape"
        raise ValueError(
            f"{what} does not fit the initial model: "
            + ", ".join(f"{k} {w} vs {h}" for k, (w, h) in diff.items())
            + " (requested vs init)."
        )
    if posemb is not None and posemb != cfg["posemb"]:
        raise ValueError(
            f"`posemb`={posemb!r} does not fit the initial model, whose posemb is "
            f"{cfg['posemb']!r}."
        )
    if rep_size is not None:
        units = cfg["width"] if rep_size is True else (rep_size or 0)
        if units != (cfg["rep_size"] or 0):
            raise ValueError(
                f"`rep_size`={rep_size!r} does not fit the initial model, whose "
                f"representation layer has {cfg['rep_size'] or 0} units "
                "(0: none)."
            )


def _reset_head_from_dont_load(dont_load, reset_head):
    if isinstance(dont_load, str) or not isinstance(dont_load, (list, tuple)):
        raise ValueError(
            "`dont_load` must be a list of regexes (big_vision's "
            f"model_load.dont_load); received dont_load={dont_load!r}."
        )
    head = False
    for pattern in dont_load:
        try:
            hits = [k for k in _HEAD_KEYS if re.fullmatch(pattern, k)]
        except (re.error, TypeError) as e:
            raise ValueError(
                f"`dont_load` entry {pattern!r} is not a valid regex: {e}."
            ) from None
        if not hits:
            raise ValueError(
                f"`dont_load` entry {pattern!r} matches neither 'head/kernel' nor "
                "'head/bias'; only the head can be left unloaded (every other "
                "weight of the initial model is transferred)."
            )
        head = True
    if head:
        if reset_head is False:
            raise ValueError(
                "`reset_head`=False contradicts `dont_load`, which names the head."
            )
        return True
    return reset_head


def build_transfer_model(
    init,
    *,
    image_size,
    num_classes,
    pool_type=None,
    head_bias_init=0.0,
    head_zeroinit=True,
    reset_head=None,
    dont_load=(),
    **model_kwargs,
):
    """Builds a `ViTClassifier` for fine-tuning from a pre-trained model.

    Every weight of the initial model is copied exactly; a learned position
    embedding is resampled to the new grid when the resolution changes (big_vision's
    `resample_posemb`, corner-aligned linear interpolation; sincos2d tables are
    recomputed); the head is replaced by a fresh one of ``num_classes`` outputs
    (kernel zeros, bias ``head_bias_init``) when the class count differs from the
    initial model's or ``reset_head=True`` (big_vision's
    ``dont_load=['head/kernel', 'head/bias']``), and kept otherwise.

    Args:
        init: the pre-trained model: a big_vision ``.npz`` path (``"file.npz:img"``
            for a subtree), a mapping of big_vision's flat ``/``-joined names to
            arrays, a saved ``.keras`` file of a `ViTClassifier` / `ViTBackbone`
            (loaded with ``safe_mode=True``), or such a model in memory (not
            modified).
        image_size: int, (int, int) or None. Fine-tuning resolution; must be a
            multiple of the patch size. A learned posemb can only be resampled
            between square grids. None keeps the initial model's size (224 for
            a sincos2d big_vision checkpoint, whose arrays do not record it).
        num_classes: int. Classes of the new task; 0 builds no head (the model
            returns the representation).
        pool_type: str or None. Must agree with the initial model when it holds a
            MAP head or class token; None infers it (``"gap"`` for a big_vision
            checkpoint without either, the stored value for a Keras model).
        head_bias_init: float. Bias of a new head (big_vision's ``init_head_bias``).
        head_zeroinit: bool. Zero kernel for a new head (else lecun normal).
        reset_head: bool or None. True always builds a new head; None (default)
            only when ``num_classes`` differs from the initial head's; False
            raises if the head cannot be kept.
        dont_load: big_vision's ``config.model_load.dont_load``: regexes
            (``re.fullmatch``) of checkpoint names not to load. Only head names
            are supported: matching ``head/kernel`` or ``head/bias`` means
            ``reset_head=True`` (the transfer configs'
            ``['head/kernel', 'head/bias']``).
        **model_kwargs: ``dropout``, ``remat``, ``dtype``, ``flash_attention`` for
            the new model (a Keras ``init``'s values otherwise; None entries are
            ignored); ``variant``, ``width``, ``depth``, ``num_heads``,
            ``mlp_dim``, ``patch_size``, ``posemb`` and ``rep_size`` (e.g. a
            training config's ``model`` dict) are checked against the initial
            model.

    Returns:
        A `ViTClassifier` at ``image_size`` with ``num_classes`` outputs.

    Raises:
        FileNotFoundError, TypeError, ValueError: naming the faulty argument.

    Example:
    >>> import keras, numpy as np, keras_scalevit
    >>> pre = keras_scalevit.models.ViTClassifier.from_variant(
    ...     "mu/8", num_classes=10, image_size=16, pool_type="map")
    >>> model = keras_scalevit.transfer.build_transfer_model(
    ...     pre, image_size=32, num_classes=3, head_bias_init=-1.0)
    >>> model.backbone.grid_size, model.num_classes
    ((4, 4), 3)
    >>> keras.ops.convert_to_numpy(model(np.zeros((1, 32, 32, 3), "float32"))).tolist()
    [[-1.0, -1.0, -1.0]]
    """
    check_kwargs(
        "build_transfer_model",
        model_kwargs,
        _BACKBONE_OPTIONS + _CHECKED_OPTIONS + _OWN_ARGUMENTS,
    )
    size = _check_image_size(image_size)
    num_classes = check_int("num_classes", num_classes, minimum=0)
    if pool_type is not None:
        pool_type = check_choice("pool_type", pool_type, POOL_TYPES)
    if reset_head is not None:
        reset_head = check_bool("reset_head", reset_head)
    head_bias_init = check_float("head_bias_init", head_bias_init)
    head_zeroinit = check_bool("head_zeroinit", head_zeroinit)
    model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
    reset_head = _reset_head_from_dont_load(dont_load, reset_head)
    variant = model_kwargs.pop("variant", None)
    posemb = model_kwargs.pop("posemb", None)
    rep_size = model_kwargs.pop("rep_size", None)
    shape = {k: model_kwargs.pop(k) for k in _SHAPE_OPTIONS if k in model_kwargs}

    kind, source = _resolve_init(init)
    old_grid = None  # known for a Keras model; a flat checkpoint does not record it
    if kind == "model":
        model = source
        backbone = model if isinstance(model, ViTBackbone) else model.backbone
        old_grid = tuple(backbone.grid_size)
        stored_pool = getattr(model, "pool_type", None)
        if stored_pool is not None and pool_type not in (None, stored_pool):
            raise ValueError(
                f"`pool_type`={pool_type!r} does not fit the initial model, built "
                f"with pool_type={stored_pool!r}."
            )
        if isinstance(model, ViTBackbone) and pool_type is None:
            pool_type = "tok" if backbone.class_token else None
        pool_type = pool_type or stored_pool
        if pool_type == "tok" and not backbone.class_token:
            raise ValueError(
                "`pool_type`='tok' needs a class token; the initial backbone has none."
            )
        for key in ("dropout", "remat", "flash_attention"):
            model_kwargs.setdefault(key, getattr(backbone, key))
        # The sub-layers carry the policy (the functional wrapper reports float32).
        model_kwargs.setdefault("dtype", backbone.embedding.dtype_policy.name)
        if size is None:
            size = backbone.image_size
        params = {
            k: np.asarray(keras.ops.convert_to_numpy(v)).astype(np.float32)
            for k, v in to_big_vision(model).items()
        }
    else:
        params = source
    cfg = infer_config(params)
    _check_against_checkpoint(cfg, variant, posemb, rep_size, shape)

    # Resolution: the grid must be whole, and learned tables resample square only.
    patch = cfg["patch_size"]
    if size is not None:
        for i, axis in enumerate(("height", "width")):
            if size[i] % patch[i]:
                raise ValueError(
                    f"`image_size`={image_size!r} is not divisible by the initial "
                    f"model's patch size {patch}: the image {axis} {size[i]} must "
                    f"be a multiple of {patch[i]}."
                )
        if cfg["posemb"] == "learn":
            old = cfg["grid_tokens"]
            new_grid = (size[0] // patch[0], size[1] // patch[1])
            g = int(round(np.sqrt(old)))
            if old_grid is not None and new_grid != old_grid:
                square = old_grid[0] == old_grid[1] and new_grid[0] == new_grid[1]
                if not square:
                    raise ValueError(
                        f"`image_size`={image_size!r} gives a {new_grid[0]}x"
                        f"{new_grid[1]} patch grid; the initial model's learned "
                        f"position embedding is {old_grid[0]}x{old_grid[1]} and can "
                        "only be resampled between square grids (big_vision's "
                        "resample_posemb)."
                    )
            elif new_grid[0] * new_grid[1] != old and (
                g * g != old or new_grid[0] != new_grid[1]
            ):
                raise ValueError(
                    f"`image_size`={image_size!r} gives a {new_grid[0]}x{new_grid[1]} "
                    f"patch grid; the learned position embedding has {old} tokens "
                    "and can only be resampled between square grids (big_vision's "
                    "resample_posemb)."
                )

    has_head = "head/kernel" in params
    ckpt_classes = cfg["num_classes"]
    new_head = bool(num_classes) and (
        reset_head is True or not has_head or num_classes != ckpt_classes
    )
    if reset_head is False and num_classes and new_head:
        raise ValueError(
            f"`reset_head`=False, but the head cannot be kept: `num_classes`="
            f"{num_classes} vs the initial model's {ckpt_classes}."
        )
    if new_head or num_classes == 0:
        # Without head entries the converter builds a fresh head (or none).
        params = {k: v for k, v in params.items() if k not in _HEAD_KEYS}
    return from_big_vision(
        params,
        pool_type=pool_type,
        image_size=size,
        num_classes=num_classes,
        head_bias_init=head_bias_init,
        head_zeroinit=head_zeroinit,
        **model_kwargs,
    )


def ema_optimizer_kwargs(config):
    """Optimizer arguments for Polyak (EMA) weight averaging from a config.

    Reads ``config.ema_momentum`` (absent or None: no averaging, big_vision's
    behaviour). The paper averages the weights of its largest models when
    fine-tuning; big_vision has no implementation, so the momentum is a choice
    (e.g. 0.9999 for 20k steps).

    Args:
        config: dict or ``ml_collections.ConfigDict``.

    Returns:
        ``{}`` or ``{"use_ema": True, "ema_momentum": m}`` for a Keras optimizer
        (e.g. ``from_big_vision_config(config, ..., **kwargs)``).

    Example:
    >>> from keras_scalevit.transfer import ema_optimizer_kwargs
    >>> ema_optimizer_kwargs({"ema_momentum": 0.9999})
    {'use_ema': True, 'ema_momentum': 0.9999}
    >>> ema_optimizer_kwargs({})
    {}
    """
    if not hasattr(config, "get"):
        raise TypeError(
            f"`config` must be a dict or ConfigDict, got {type(config).__name__}."
        )
    momentum = config.get("ema_momentum")
    if momentum is None:
        return {}
    momentum = check_probability("ema_momentum", momentum)
    return {"use_ema": True, "ema_momentum": momentum}
