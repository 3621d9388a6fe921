"""Conversion between big_vision ViT checkpoints and keras-scalevit models.

A big_vision checkpoint is a flat mapping of ``/``-joined parameter names to arrays
(``np.savez`` of `utils.tree_flatten_with_names`). This module normalises the layouts
met in practice (``params/`` and ``opt/target/`` prefixes, image-tower subtrees,
scan-stacked blocks, pre-Linen numbering, legacy position-embedding keys), infers
the architecture from the arrays, and maps names onto Keras ``variable.path``.
"""

import os
import re
import zipfile
from collections import defaultdict
from collections.abc import Mapping

import keras
import numpy as np
from absl import logging

from keras_scalevit.models.vit.posemb import resample_posemb
from keras_scalevit.models.vit.vit_backbone import ViTBackbone
from keras_scalevit.models.vit.vit_classifier import POOL_TYPES, ViTClassifier
from keras_scalevit.models.vit.vit_layers import POSEMB_TYPES, _pair
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_int,
    check_kwargs,
)

# Keras variable paths that differ from big_vision's names (all others are equal).
_KERAS_TO_BV = {
    "pos_embedding/pos_embedding": "pos_embedding",
    "cls/cls": "cls",
}
_BV_TO_KERAS = {v: k for k, v in _KERAS_TO_BV.items()}
_LEGACY_POSEMB_KEYS = (
    "Transformer/posembed_input/pos_embedding",
    "Transformer/pos_embedding",
)
_HEAD_KEYS = ("head/kernel", "head/bias")
# `from_big_vision` keywords passed on to the model (the rest comes from the arrays).
_MODEL_OPTIONS = ("dtype", "remat", "dropout", "flash_attention")
_HEAD_OPTIONS = ("head_bias_init", "head_zeroinit")
# Architecture arguments the arrays decide; passing one is an error.
_INFERRED = ("width", "depth", "num_heads", "mlp_dim", "patch_size", "rep_size")


def load_npz(path):
    """Reads a big_vision ``.npz`` checkpoint into a flat ``{name: array}`` dict.

    Uses ``allow_pickle=False``. bfloat16 arrays (stored by NumPy as 2-byte void)
    are converted to float32. A ``path:subtree`` suffix (big_vision's syntax, e.g.
    ``siglip.npz:img``) keeps only that subtree.

    Args:
        path: str or path-like, optionally with a ``:subtree`` suffix.

    Returns:
        dict mapping ``/``-joined names to NumPy arrays.

    Example:
    >>> import numpy as np, os, tempfile
    >>> from keras_scalevit.convert import load_npz
    >>> f = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> np.savez(f, **{"head/bias": np.zeros(3, "float32")})
    >>> sorted(load_npz(f))
    ['head/bias']
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"`path` must be a path to a .npz file, got {type(path).__name__}."
        )
    path = os.fspath(path)
    subtree = None
    m = re.fullmatch(r"(.*?\.npz):([\w/]+)", path)
    if m:
        path, subtree = m.groups()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`path` must be an existing .npz file, got {path!r}.")
    if not zipfile.is_zipfile(path):
        # np.load would try a .npy header, then pickle ("contains pickled data").
        raise ValueError(
            f"`path` must be a .npz checkpoint (a zip of .npy arrays, as np.savez "
            f"writes), got {path!r}, which is not a zip archive."
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            params = {k: _to_float(z[k]) for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"`path` must be a .npz checkpoint of plain arrays, got {path!r}, which "
            f"cannot be read without pickle: {e}"
        ) from None
    if subtree:
        # As big_vision's utils.load_params: the subtree is taken inside the
        # parameters, i.e. after a top-level 'params/' (or 'opt/target/') prefix
        # is removed (SigLIP files hold 'params/img/...': 'file.npz:img').
        for prefix in ("params/", "opt/target/"):
            if any(k.startswith(prefix) for k in params):
                params = _take_prefix(params, prefix)
                break
        params = _take_prefix(params, subtree.strip("/") + "/")
        if not params:
            raise ValueError(f"Checkpoint {path!r} has no subtree {subtree!r}.")
    return params


def _to_float(a):
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:
        import ml_dtypes

        return a.view(ml_dtypes.bfloat16).astype(np.float32)
    return a


def _take_prefix(params, prefix):
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _renumber_pre_linen(params):
    """Renumbers ``Module_<i>`` children per module class, as Flax's convert_pre_linen.

    Pre-Linen Flax numbered submodules globally (``LayerNorm_0,
    MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3``); Linen numbers them
    per class. Idempotent on modern checkpoints.
    """
    children = defaultdict(set)  # parent path -> child names
    for key in params:
        parts = key.split("/")
        for i in range(len(parts) - 1):
            children["/".join(parts[:i])].add(parts[i])
    renames = {}  # (parent, old child) -> new child
    for parent, names in children.items():
        by_class = defaultdict(list)
        for name in names:
            m = re.fullmatch(r"(.+)_(\d+)", name)
            if m:
                by_class[m.group(1)].append(name)
        for cls_name, members in by_class.items():
            for i, name in enumerate(sorted(members, key=_natural_key)):
                renames[(parent, name)] = f"{cls_name}_{i}"
    out = {}
    for key, value in params.items():
        parts = key.split("/")
        new = [
            renames.get(("/".join(parts[:i]), p), p) if i < len(parts) - 1 else p
            for i, p in enumerate(parts)
        ]
        out["/".join(new)] = value
    return out


def normalize_checkpoint(source):
    """Brings a big_vision ViT checkpoint into the modern flat per-layer layout.

    Handles: a ``params/`` or ``opt/target/`` prefix (other top-level entries are
    ignored, as big_vision's loader does); a single image-tower subtree (e.g.
    ``img/`` of SigLIP); scan-stacked ``Transformer/encoderblock/...`` leaves; pre-Linen
    numbering; legacy posemb keys with a class-token slot folded into ``cls``; an
    inlined MAP head (``probe`` at the top level).

    Args:
        source: a path to an ``.npz`` file or a mapping of names to arrays.

    Returns:
        dict of float32 NumPy arrays with big_vision's modern names.

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.convert import normalize_checkpoint
    >>> p = normalize_checkpoint({"params/embedding/kernel": np.zeros((8, 8, 3, 32))})
    >>> sorted(p)
    ['embedding/kernel']
    """
    if isinstance(source, (str, os.PathLike)):
        params = load_npz(source)
    elif isinstance(source, Mapping):
        params = dict(source)
    else:
        raise TypeError(
            "`source` must be a path to a .npz file or a mapping of big_vision names "
            f"to arrays, got {type(source).__name__}."
        )
    params = {k: _to_float(np.asarray(v)) for k, v in params.items()}
    bad = sorted(
        k
        for k, v in params.items()
        if not isinstance(k, str) or v.dtype.kind not in "fiu"
    )
    if bad:
        raise ValueError(
            "`source` must map string names to numeric arrays; these entries are "
            "not: "
            + ", ".join(f"{k!r} ({params[k].dtype})" for k in bad[:10])
            + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            + "."
        )
    for prefix in ("params/", "opt/target/"):
        if any(k.startswith(prefix) for k in params):
            params = _take_prefix(params, prefix)
            break
    # A model stored as one subtree (e.g. a two-tower model's image tower).
    if "embedding/kernel" not in params:
        roots = {
            k[: -len("embedding/kernel")]
            for k in params
            if k.endswith("/embedding/kernel")
        }
        roots = {r for r in roots if not r.endswith("pos_")}
        if len(roots) != 1:
            raise ValueError(
                "Cannot find a ViT in the checkpoint: expected an 'embedding/kernel' "
                f"entry (optionally under one prefix); found prefixes {sorted(roots)} "
                f"among {len(params)} keys, e.g. {sorted(params)[:5]}."
            )
        params = _take_prefix(params, roots.pop())

    # Scan layout: one block subtree with a leading depth axis.
    scan_prefix = "Transformer/encoderblock/"
    scanned = {k: v for k, v in params.items() if k.startswith(scan_prefix)}
    if scanned:
        depths = {v.shape[0] for v in scanned.values()}
        if len(depths) != 1:
            raise ValueError(
                "Scan-layout checkpoint with inconsistent leading (depth) axes: "
                f"{sorted(depths)}."
            )
        for k, v in scanned.items():
            del params[k]
            for i in range(v.shape[0]):
                params[f"Transformer/encoderblock_{i}/{k[len(scan_prefix) :]}"] = v[i]

    params = _renumber_pre_linen(params)

    legacy = [k for k in _LEGACY_POSEMB_KEYS if k in params]
    if legacy:
        pe = params.pop(legacy[0])
        n = pe.shape[1]
        g = int(np.sqrt(n))
        # Old code added the posemb after prepending the class token: slot 0 is the
        # class token's. Applied to the legacy key names only (spec §1.8).
        if g * g + 1 == n:
            if "cls" in params:
                params["cls"] = params["cls"] + pe[:, :1]
            pe = pe[:, 1:]
        params["pos_embedding"] = pe
    if "probe" in params:  # ViT-G development checkpoints with an inlined MAP head
        for k in list(params):
            if k == "probe" or k.split("/")[0] in (
                "MlpBlock_0",
                "MultiHeadDotProductAttention_0",
                "LayerNorm_0",
            ):
                params[f"MAPHead_0/{k}"] = params.pop(k)
    return {k: np.asarray(v, np.float32) for k, v in params.items()}


def infer_config(params):
    """Infers the architecture of a normalised checkpoint (see `normalize_checkpoint`).

    Returns:
        dict with ``patch_size``, ``width``, ``depth``, ``num_heads``, ``mlp_dim``,
        ``posemb``, ``pool_type`` (None when the arrays cannot show it: gap, 0 or
        none), ``rep_size``, ``num_classes`` and ``grid_tokens`` (learned posemb
        length or None).

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.convert import infer_config
    >>> infer_config({"embedding/kernel": np.zeros((8, 8, 3, 32))})["width"]
    32
    """
    try:
        kernel = params["embedding/kernel"]
    except KeyError:
        raise ValueError(
            "Checkpoint has no 'embedding/kernel' (the patch stem)."
        ) from None
    ph, pw, channels, width = kernel.shape
    if channels != 3:
        raise ValueError(
            f"Checkpoint stem 'embedding/kernel' expects {channels} input channels; "
            "keras-scalevit models take RGB images (3 channels)."
        )
    blocks = sorted(
        {
            int(m.group(1))
            for k in params
            if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))
        }
    )
    if blocks != list(range(len(blocks))):
        raise ValueError(
            f"Checkpoint encoder blocks are not numbered 0..L-1: found {blocks}."
        )
    att = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"
    mlp = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
    num_heads = params[att].shape[1] if att in params else None
    mlp_dim = params[mlp].shape[1] if mlp in params else None
    if "MAPHead_0/probe" in params:
        pool_type = "map"
    elif "cls" in params:
        pool_type = "tok"
    else:
        pool_type = None
    head = params.get("head/kernel")
    return dict(
        patch_size=(ph, pw),
        width=width,
        depth=len(blocks),
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        posemb="learn" if "pos_embedding" in params else "sincos2d",
        pool_type=pool_type,
        rep_size=int(params["pre_logits/kernel"].shape[1])
        if "pre_logits/kernel" in params
        else False,
        num_classes=int(head.shape[1]) if head is not None else 0,
        grid_tokens=int(params["pos_embedding"].shape[1])
        if "pos_embedding" in params
        else None,
    )


def to_big_vision(model):
    """Returns a model's weights as big_vision's flat ``{name: array}`` mapping.

    Inverse of `from_big_vision` (round trip exact); the result can be saved with
    ``np.savez`` and loaded by big_vision's `vit.load`.

    Args:
        model: a `ViTClassifier` (or `ViTBackbone`).

    Example:
    >>> import keras_scalevit
    >>> model = keras_scalevit.models.ViTClassifier.from_variant(
    ...     "mu/8", num_classes=3, image_size=16)
    >>> params = keras_scalevit.convert.to_big_vision(model)
    >>> params["head/kernel"].shape
    (32, 3)
    """
    _check_model("model", model)
    return {_bv_name(v.path): keras.ops.convert_to_numpy(v) for v in model.weights}


def _check_model(name, model):
    if isinstance(model, (ViTClassifier, ViTBackbone)):
        return
    hint = ""
    if isinstance(model, (str, os.PathLike)):
        hint = (
            " (a path: load it first, e.g. keras.saving.load_model(path) for a "
            ".keras file, or use load_npz for a .npz)"
        )
    raise TypeError(
        f"`{name}` must be a keras_scalevit ViTClassifier or ViTBackbone, got "
        f"{type(model).__name__}{hint}."
    )


def _bv_name(path):
    return _KERAS_TO_BV.get(path, path)


def load_big_vision_weights(model, source, *, skip_head=False):
    """Loads a big_vision checkpoint into an existing model, strictly.

    Every model weight must be present with its shape, and every checkpoint entry
    must be used, else a `ValueError` lists the missing, unexpected and mis-shaped
    keys; a weight holding NaN or infinite values raises a `ValueError` naming
    it. Nothing is assigned unless every check passes. A learned position
    embedding of another square grid is resampled as big_vision's
    `resample_posemb` does (fine-tuning at another resolution).

    Args:
        model: a `ViTClassifier` or `ViTBackbone`.
        source: ``.npz`` path or mapping of big_vision names to arrays.
        skip_head: bool. Keep the model's own head (big_vision's
            ``dont_load=['head/kernel', 'head/bias']``) and ignore the checkpoint's.

    Example:
    >>> import keras_scalevit
    >>> src = keras_scalevit.models.ViTClassifier.from_variant(
    ...     "mu/8", num_classes=3, image_size=16)
    >>> dst = keras_scalevit.models.ViTClassifier.from_variant(
    ...     "mu/8", num_classes=3, image_size=32)
    >>> keras_scalevit.convert.load_big_vision_weights(
    ...     dst, keras_scalevit.convert.to_big_vision(src))
    """
    _check_model("model", model)
    skip_head = check_bool("skip_head", skip_head)
    params = normalize_checkpoint(source)
    if skip_head:
        for k in _HEAD_KEYS:
            params.pop(k, None)
    weights = {_bv_name(v.path): v for v in model.weights}
    if skip_head:
        weights = {k: v for k, v in weights.items() if k not in _HEAD_KEYS}
    missing = sorted(set(weights) - set(params))
    unexpected = sorted(set(params) - set(weights))
    mis_shaped = []
    values = {}
    for name, var in weights.items():
        if name not in params:
            continue
        value = params[name]
        target = tuple(var.shape)
        if name == "pos_embedding" and value.shape != target:
            grid = getattr(getattr(model, "backbone", model), "grid_size", None)
            if (
                value.ndim == 3
                and value.shape[2] == target[2]
                and grid is not None
                and grid[0] == grid[1]
                and round(np.sqrt(value.shape[1])) ** 2 == value.shape[1]
            ):
                value = resample_posemb(value, grid[0])
        if tuple(value.shape) != target:
            mis_shaped.append(
                f"{name}: checkpoint {tuple(value.shape)} vs model {target}"
            )
            continue
        values[name] = value
    where = (
        f"The checkpoint {os.fspath(source)!r}"
        if isinstance(source, (str, os.PathLike))
        else "The checkpoint mapping"
    )
    if missing or unexpected or mis_shaped:
        lines = [f"{where} does not fit the model {model.name!r}."]
        if missing:
            lines.append(f"Missing in the checkpoint ({len(missing)}): {missing}")
        if unexpected:
            lines.append(
                f"Unexpected in the checkpoint ({len(unexpected)}): {unexpected}"
            )
        if mis_shaped:
            lines.append(f"Mis-shaped ({len(mis_shaped)}): {mis_shaped}")
        raise ValueError("\n".join(lines))
    # A NaN or inf weight would load silently and poison every output.
    non_finite = [
        f"{name} ({int(np.size(v) - np.count_nonzero(np.isfinite(v)))} of {v.size})"
        for name, v in sorted(values.items())
        if not np.isfinite(v).all()
    ]
    if non_finite:
        raise ValueError(
            f"{where} holds NaN or infinite values in {len(non_finite)} "
            f"weight(s): {', '.join(non_finite)}."
        )
    for name, var in weights.items():
        var.assign(values[name].astype(var.dtype))


def from_big_vision(
    source,
    *,
    pool_type=None,
    posemb=None,
    image_size=None,
    num_classes=None,
    **model_kwargs,
):
    """Builds a `ViTClassifier` from a big_vision ViT checkpoint.

    The architecture (width, depth, heads, MLP size, patch, posemb kind, grid, MAP or
    class-token pooling, representation layer, head) is inferred from the arrays;
    arguments are needed only for what the arrays cannot show. The returned model,
    called on float32 images ``(n, H, W, 3)`` in [-1, 1], gives big_vision's logits,
    or its representation (``pre_logits``) when the checkpoint has no head or
    ``num_classes=0``.

    Accepts per-layer ``encoderblock_{i}`` and scan-stacked ``encoderblock`` keys,
    ``params/`` or ``opt/target/`` prefixes, an image-tower subtree (``path.npz:img``)
    and the legacy layouts of published checkpoints (augreg ``.npz`` files).

    Args:
        source: path to an ``.npz`` file or a mapping of big_vision's flat
            ``/``-joined keys to arrays.
        pool_type: str or None. big_vision's pool type. Inferred as ``"map"`` or
            ``"tok"`` when the checkpoint holds a MAP head or class token; otherwise
            the arrays cannot tell ``"gap"``, ``"0"`` and ``"none"`` apart and the
            default is big_vision's ``"gap"``.
        posemb: str or None. ``"learn"`` if the checkpoint has ``pos_embedding``,
            else ``"sincos2d"``; an explicit value must agree with the arrays.
        image_size: int, (int, int) or None. Defaults to the learned posemb's grid
            times the patch size (224 for sincos2d). A different square size
            resamples the learned posemb (big_vision's `resample_posemb`).
        num_classes: int or None. None keeps the checkpoint's head (or none); 0
            drops it (the model returns the representation); another count builds a
            fresh zero-initialised head (fine-tuning).
        **model_kwargs: other `ViTBackbone` arguments (``dtype``, ``remat``,
            ``dropout``, ``flash_attention``) and ``head_bias_init``.

    Returns:
        A `ViTClassifier` holding the checkpoint's weights.

    Example:
    >>> import keras_scalevit
    >>> ref = keras_scalevit.models.ViTClassifier.from_variant(
    ...     "mu/8", num_classes=3, image_size=16, pool_type="map")
    >>> model = keras_scalevit.convert.from_big_vision(
    ...     keras_scalevit.convert.to_big_vision(ref))
    >>> model.pool_type, model.num_classes
    ('map', 3)
    """
    inferred = sorted(set(model_kwargs) & set(_INFERRED))
    if inferred:
        raise TypeError(
            f"from_big_vision got {', '.join(repr(k) for k in inferred)}, which the "
            "checkpoint's arrays decide; build a model with ViTClassifier and use "
            "load_big_vision_weights to load into another shape."
        )
    check_kwargs(
        "from_big_vision",
        model_kwargs,
        _MODEL_OPTIONS
        + _HEAD_OPTIONS
        + ("source", "pool_type", "posemb", "image_size", "num_classes"),
    )
    if pool_type is not None:
        pool_type = check_choice("pool_type", pool_type, POOL_TYPES)
    if posemb is not None:
        posemb = check_choice("posemb", posemb, POSEMB_TYPES)
    if image_size is not None:
        image_size = _pair(image_size, "image_size")
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, minimum=0)
    params = normalize_checkpoint(source)
    cfg = infer_config(params)
    if cfg["num_heads"] is None or cfg["mlp_dim"] is None:
        raise ValueError(
            "Checkpoint has no 'Transformer/encoderblock_0/...' attention and MLP "
            "weights; cannot infer the number of heads and the MLP width."
        )
    if posemb is not None and posemb != cfg["posemb"]:
        have = "has" if cfg["posemb"] == "learn" else "has no"
        raise ValueError(
            f"`posemb`={posemb!r} does not fit the checkpoint: it {have} a learned "
            f"'pos_embedding', so its posemb is {cfg['posemb']!r}."
        )
    if pool_type is None:
        pool_type = cfg["pool_type"] or "gap"
        if cfg["pool_type"] is None:
            logging.info(
                "Checkpoint has no MAP head or class token; using big_vision's "
                "default pool_type='gap' (pass pool_type='0' or 'none' otherwise)."
            )
    elif cfg["pool_type"] is not None and pool_type != cfg["pool_type"]:
        raise ValueError(
            f"`pool_type`={pool_type!r} does not fit the checkpoint, which holds "
            f"the parameters of pool_type={cfg['pool_type']!r}."
        )
    patch = cfg["patch_size"]
    if image_size is None:
        if cfg["posemb"] == "sincos2d":
            image_size = 224
        else:
            g = int(round(np.sqrt(cfg["grid_tokens"])))
            if g * g != cfg["grid_tokens"]:
                raise ValueError(
                    f"The checkpoint's learned posemb has {cfg['grid_tokens']} tokens, "
                    "not a square grid: pass `image_size=(height, width)`."
                )
            image_size = (g * patch[0], g * patch[1])
    ckpt_classes = cfg["num_classes"]
    if num_classes is None:
        num_classes = ckpt_classes
    new_head = bool(num_classes) and num_classes != ckpt_classes
    if "head/kernel" in params and (num_classes == 0 or new_head):
        for k in _HEAD_KEYS:
            params.pop(k, None)
    if new_head:
        logging.info(
            "Building a fresh zero-initialised head with %d classes (checkpoint: %d).",
            num_classes,
            ckpt_classes,
        )
    head_kwargs = {
        k: model_kwargs.pop(k)
        for k in ("head_bias_init", "head_zeroinit")
        if k in model_kwargs
    }
    backbone = ViTBackbone(
        image_size=image_size,
        patch_size=patch,
        width=cfg["width"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_dim=cfg["mlp_dim"],
        posemb=cfg["posemb"],
        class_token=pool_type == "tok",
        **model_kwargs,
    )
    model = ViTClassifier(
        backbone,
        num_classes,
        pool_type=pool_type,
        rep_size=cfg["rep_size"],
        **head_kwargs,
    )
    load_big_vision_weights(model, params, skip_head=new_head)
    return model
