"""Presets: keras-hub's directory format, handles, downloads and class names.

A preset directory holds keras-hub's files: ``config.json`` (the serialised
`ViTBackbone`), ``model.weights.h5`` (its weights), ``task.json`` (the serialised
`ViTClassifier`, backbone included), ``task.weights.h5`` (the weights outside the
backbone: MAP head, representation layer, head), ``preprocessor.json`` (a
`ViTImageClassifierPreprocessor`) and ``metadata.json`` (versions, parameter
count, date, and anything the saver adds). Everything loads from JSON and HDF5
with Keras' safe mode; nothing is unpickled or executed.

A handle is one of: a registry name (`keras_scalevit.list_presets()`) or one of
big_vision's vanity names, a local preset directory, a local big_vision ``.npz``
(``file.npz:subtree`` for a tower), an ``http(s)://`` or ``gs://`` URL of such an
``.npz`` (``gs://bucket/path`` is read as
``https://storage.googleapis.com/bucket/path``), ``hf://org/name`` (needs
``huggingface_hub``) or ``kaggle://org/model/keras/variant`` (needs ``kagglehub``).
Downloads go through `keras.utils.get_file` into ``$KERAS_HOME/keras_scalevit``
(default ``~/.keras``).
"""

import datetime
import hashlib
import json
import os
import re
import socket
import urllib.parse
import zipfile

import keras
import numpy as np

from keras_scalevit.models.vit.vit_backbone import ViTBackbone
from keras_scalevit.models.vit.vit_classifier import ViTClassifier
from keras_scalevit.models.vit.vit_image_classifier_preprocessor import (
    ViTImageClassifierPreprocessor,
)
from keras_scalevit.models.vit.vit_presets import (
    PRESETS,
    _https,
    get_preset_entry,
    list_presets,
)
from keras_scalevit.utils.validation import check_kwargs, check_positive_int

CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
PREPROCESSOR_CONFIG_FILE = "preprocessor.json"
METADATA_FILE = "metadata.json"

PACKAGE_PRESETS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets"
)
CACHE_SUBDIR = "keras_scalevit"
# Seconds a connection may stall before a download gives up (offline use fails
# fast instead of waiting for the system's TCP timeout).
DOWNLOAD_TIMEOUT_ENV = "KERAS_SCALEVIT_DOWNLOAD_TIMEOUT"
_DEFAULT_TIMEOUT = 20.0

# Arguments `from_preset` passes on to the rebuilt model.
_BACKBONE_OPTIONS = ("dtype", "remat", "dropout", "flash_attention")
_CLASSIFIER_OPTIONS = _BACKBONE_OPTIONS + ("pool_type", "head_bias_init")

# Class-name lists shipped in `keras_scalevit/presets/class_names/` (WordNet id,
# tab, lemmas). imagenet1k: the 1000 ids in label order of tensorflow-datasets'
# `datasets/imagenet2012/labels.txt` (tfds 4.9.10 wheel); imagenet21k: the 21,843
# ids in the order of Google's i21k checkpoints, `timm/data/_info/
# imagenet21k_goog_synsets.txt`; lemmas from `timm/data/_info/
# imagenet_synset_to_lemma.txt` (timm 1.0.31 wheel).
CLASS_NAME_LISTS = ("imagenet1k", "imagenet21k")


# --------------------------------------------------------------------------- save


def _strip(config, keys=("compile_config", "build_config")):
    if isinstance(config, dict):
        for k in keys:
            config.pop(k, None)
        for v in config.values():
            _strip(v, keys)
    elif isinstance(config, list):
        for v in config:
            _strip(v, keys)
    return config


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=4)


def _serialize(obj):
    return _strip(keras.saving.serialize_keras_object(obj))


def _versions():
    import keras_scalevit

    return dict(
        keras_version=keras.version(),
        keras_scalevit_version=keras_scalevit.__version__,
    )


def _check_dir(preset_dir):
    if not isinstance(preset_dir, (str, os.PathLike)):
        raise TypeError(
            f"`preset_dir` must be a path (str or os.PathLike), got {preset_dir!r}."
        )
    preset_dir = os.fspath(preset_dir)
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise ValueError(f"`preset_dir`={preset_dir!r} exists and is not a directory.")
    os.makedirs(preset_dir, exist_ok=True)
    return preset_dir


def _metadata(backbone, task, extra):
    meta = dict(_versions())
    meta["parameter_count"] = int(backbone.count_params())
    if task is not None:
        meta["task_parameter_count"] = int(task.count_params())
    meta["date_saved"] = datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")
    if extra:
        if not isinstance(extra, dict):
            raise TypeError(f"`metadata` must be a dict or None, got {extra!r}.")
        json.dumps(extra)  # must be JSON-serialisable; raises TypeError otherwise
        meta.update(extra)
    return meta


def save_backbone(backbone, preset_dir, metadata=None):
    """Writes a `ViTBackbone` as a keras-hub preset directory (see module doc)."""
    preset_dir = _check_dir(preset_dir)
    _write_json(os.path.join(preset_dir, CONFIG_FILE), _serialize(backbone))
    backbone.save_weights(os.path.join(preset_dir, MODEL_WEIGHTS_FILE))
    _write_json(
        os.path.join(preset_dir, METADATA_FILE), _metadata(backbone, None, metadata)
    )
    return preset_dir


def _backbone_layers(task):
    return list(task.backbone._flatten_layers(include_self=True))


def save_classifier(classifier, preset_dir, metadata=None):
    """Writes a `ViTClassifier` (and its preprocessor) as a keras-hub preset."""
    preset_dir = _check_dir(preset_dir)
    save_backbone(classifier.backbone, preset_dir)
    _write_json(os.path.join(preset_dir, TASK_CONFIG_FILE), _serialize(classifier))
    backbone_ids = {id(w) for w in classifier.backbone.weights}
    task_path = os.path.join(preset_dir, TASK_WEIGHTS_FILE)
    if any(id(w) not in backbone_ids for w in classifier.weights):
        keras.saving.save_weights(
            classifier, task_path, objects_to_skip=_backbone_layers(classifier)
        )
    elif os.path.exists(task_path):
        os.remove(task_path)
    pre_path = os.path.join(preset_dir, PREPROCESSOR_CONFIG_FILE)
    if classifier.preprocessor is not None:
        _write_json(pre_path, _serialize(classifier.preprocessor))
    elif os.path.exists(pre_path):
        os.remove(pre_path)
    _write_json(
        os.path.join(preset_dir, METADATA_FILE),
        _metadata(classifier.backbone, classifier, metadata),
    )
    return preset_dir


# ---------------------------------------------------------------------- handles


def _split_subtree(path):
    m = re.fullmatch(r"(.*?\.npz):([\w/]+)", path)
    return (m.group(1), m.group(2)) if m else (path, None)


def _cache_dir():
    return os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )


def _timeout():
    value = os.environ.get(DOWNLOAD_TIMEOUT_ENV)
    if value is None:
        return _DEFAULT_TIMEOUT
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"${DOWNLOAD_TIMEOUT_ENV} must be a number of seconds, got {value!r}."
        ) from None


def _valid_npz(path):
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def download(url, sha256=None):
    """Downloads a checkpoint URL into the Keras cache and returns the local path.

    ``gs://bucket/path`` is fetched from its public https form. With ``sha256``
    the file is checked (`keras.utils.get_file`'s ``file_hash``). A download that
    fails, does not match the hash or is not a readable ``.npz`` is deleted from
    the cache before the error is raised, so a retry starts afresh. Connections
    time out after ``$KERAS_SCALEVIT_DOWNLOAD_TIMEOUT`` seconds (default 20).

    Args:
        url: str. ``http://``, ``https://`` or ``gs://`` URL of a ``.npz`` file.
        sha256: str or None. Expected SHA-256 (hex) of the file.

    Returns:
        str, the cached file's path.
    """
    https = _https(url)
    parsed = urllib.parse.urlparse(https)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"`url` must be an http(s):// or gs:// URL, got {url!r}.")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(sha256)):
        raise ValueError(f"`sha256` must be 64 hex digits, got {sha256!r}.")
    base = os.path.basename(parsed.path) or "checkpoint.npz"
    # One cache entry per URL (two URLs may share a file name).
    fname = hashlib.sha256(https.encode()).hexdigest()[:10] + "_" + base
    cache_dir = _cache_dir()
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError:
        pass
    if not os.access(cache_dir, os.W_OK):  # as get_file falls back
        cache_dir = os.path.join("/tmp", ".keras")
    target = os.path.join(cache_dir, CACHE_SUBDIR, fname)
    cached = os.path.exists(target)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_timeout())
    try:
        path = keras.utils.get_file(
            fname,
            origin=https,
            file_hash=sha256,
            hash_algorithm="sha256",
            cache_subdir=CACHE_SUBDIR,
            cache_dir=cache_dir,
        )
    except ValueError as e:  # hash mismatch after the download
        _remove(target)
        raise ValueError(
            f"The download of {https} does not match its recorded SHA-256 "
            f"{sha256}; the file was removed from the cache ({e})."
        ) from None
    except Exception as e:
        _remove(target)
        where = "not in the cache" if not cached else "in the cache but stale"
        raise OSError(
            f"Cannot download {https}: {e}. The checkpoint is {where} "
            f"({target}); check the network connection (offline?) or pass a "
            "local .npz file or preset directory."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    if not _valid_npz(path):
        _remove(path)
        raise ValueError(
            f"The file downloaded from {https} is not a readable .npz checkpoint "
            "(truncated or not a big_vision checkpoint); it was removed from the "
            "cache."
        )
    return path


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _hub_dir(preset):
    if preset.startswith("hf://"):
        try:
            import huggingface_hub
        except ImportError:
            raise ImportError(
                f"Loading {preset!r} needs the `huggingface_hub` package: "
                "`pip install huggingface_hub`."
            ) from None
        repo = preset[len("hf://") :]
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise ValueError(
                "Hugging Face presets have the form 'hf://{org}/{name}', got "
                f"{preset!r}."
            )
        return huggingface_hub.snapshot_download(repo_id=repo)
    try:
        import kagglehub
    except ImportError:
        raise ImportError(
            f"Loading {preset!r} needs the `kagglehub` package: "
            "`pip install kagglehub`."
        ) from None
    handle = preset[len("kaggle://") :]
    if len(handle.split("/")) not in (4, 5):
        raise ValueError(
            "Kaggle presets have the form "
            "'kaggle://{org}/{model}/keras/{variant}[/{version}]', got "
            f"{preset!r}."
        )
    return kagglehub.model_download(handle)


def _unknown(preset):
    import difflib

    close = difflib.get_close_matches(str(preset), list(PRESETS), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"Unknown preset {preset!r}: not a registry name "
        "(keras_scalevit.list_presets()), a big_vision vanity name, an existing "
        "preset directory or .npz file, an http(s):// or gs:// URL of a .npz, nor "
        f"an hf:// or kaggle:// handle.{hint}"
    )


def resolve(preset):
    """Resolves a handle to ``(kind, path, entry)``.

    ``kind`` is ``"dir"`` (a keras-hub preset directory) or ``"npz"`` (a
    big_vision checkpoint, ``path`` possibly with ``:subtree``); ``entry`` is the
    registry entry or None.
    """
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str) or not preset:
        raise TypeError(
            f"`preset` must be a preset name, a path or a URL (str), got {preset!r}."
        )
    entry = get_preset_entry(preset)
    if entry is not None:
        if entry.get("packaged"):
            return "dir", os.path.join(PACKAGE_PRESETS_DIR, entry["packaged"]), entry
        file, subtree = _split_subtree(entry["url"])
        path = download(file, entry.get("sha256"))
        return "npz", path + (f":{subtree}" if subtree else ""), entry
    if preset.startswith(("hf://", "kaggle://")):
        return "dir", _hub_dir(preset), None
    if re.match(r"^(https?|gs)://", preset):
        file, subtree = _split_subtree(preset)
        if not file.endswith(".npz"):
            raise ValueError(
                f"`preset`={preset!r}: a URL must point to a big_vision .npz "
                "checkpoint (optionally 'file.npz:subtree')."
            )
        path = download(file)
        return "npz", path + (f":{subtree}" if subtree else ""), None
    if re.match(r"^[a-z][a-z0-9+.-]*://", preset):
        raise _unknown(preset)
    file, subtree = _split_subtree(preset)
    if os.path.isdir(file):
        if not os.path.exists(os.path.join(file, CONFIG_FILE)):
            raise ValueError(
                f"`preset`={preset!r} is a directory without {CONFIG_FILE}: not a "
                "keras-hub preset (write one with save_to_preset)."
            )
        return "dir", file, None
    if os.path.isfile(file):
        if not file.endswith(".npz"):
            raise ValueError(
                f"`preset`={preset!r} is a file but not a big_vision .npz checkpoint."
            )
        return "npz", preset, None
    raise _unknown(preset)


# ------------------------------------------------------------------------- load


def _read_json(preset_dir, name):
    path = os.path.join(preset_dir, name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}.") from None


def _deserialize(config):
    import keras_scalevit  # noqa: F401  (registers the serialisable classes)

    return keras.saving.deserialize_keras_object(config, safe_mode=True)


def _check_class(config, cls, path):
    name = config.get("registered_name") or config.get("class_name")
    got = keras.saving.get_registered_object(name) if name else None
    if got is None or not issubclass(got, cls):
        raise ValueError(
            f"{path} holds a {name!r}, not a keras_scalevit {cls.__name__}."
        )


def _override(config, options):
    config = dict(config)
    config["config"] = {**config["config"], **options}
    return config


def _check_size_arg(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return tuple(check_positive_int("image_size", v) for v in image_size)
    v = check_positive_int("image_size", image_size)
    return (v, v)


def _check_classes_arg(num_classes):
    if num_classes is None:
        return None
    from keras_scalevit.utils.validation import check_int

    return check_int("num_classes", num_classes, minimum=0)


def _npz_model(path, entry, num_classes, image_size, load_weights, kwargs):
    from keras_scalevit.convert import from_big_vision

    arch = entry["arch"] if entry else None
    if arch is not None:
        kwargs.setdefault("pool_type", arch["pool_type"])
        size = image_size or (arch["image_size"],) * 2
    else:
        size = image_size
    if not load_weights:
        if arch is None:
            raise ValueError(
                "`load_weights=False` needs a registry preset or a preset "
                "directory: a .npz file's architecture is read from its weights."
            )
        pool = kwargs.pop("pool_type")
        head = {k: kwargs.pop(k) for k in ("head_bias_init",) if k in kwargs}
        overrides = {k: arch[k] for k in ("width", "depth", "num_heads") if k in arch}
        if "width" in arch:
            overrides["mlp_dim"] = 4 * arch["width"]
        return ViTClassifier.from_variant(
            arch["variant"],
            num_classes=arch["num_classes"] if num_classes is None else num_classes,
            image_size=size,
            pool_type=pool,
            rep_size=arch["rep_size"],
            posemb=arch["posemb"],
            **head,
            **overrides,
            **kwargs,
        )
    try:
        model = from_big_vision(
            path, image_size=size, num_classes=num_classes, **kwargs
        )
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        # load_npz's ValueError for a file that is not a readable .npz: a
        # corrupt download; any other ValueError is about the arrays themselves.
        if isinstance(e, ValueError) and "must be a .npz checkpoint" not in str(e):
            raise
        file = _split_subtree(path)[0]
        if os.path.dirname(os.path.abspath(file)).endswith(CACHE_SUBDIR):
            _remove(file)  # a corrupt cache entry must not be read again
        raise ValueError(
            f"{file} is not a readable .npz checkpoint ({e}); a cached copy was "
            "removed, so loading the preset again downloads it afresh."
        ) from None
    if arch is not None:
        _check_arch(model, arch)
    return model


def _check_arch(model, arch):
    """The converted model must be the architecture the registry records."""
    from keras_scalevit.models.vit.vit_variants import decode_variant

    want = decode_variant(arch["variant"])
    want.update({k: arch[k] for k in ("width", "depth", "num_heads") if k in arch})
    b = model.backbone
    got = dict(
        width=b.width,
        depth=b.depth,
        num_heads=b.num_heads,
        patch_size=tuple(b.patch_size),
        posemb=b.posemb,
    )
    want["patch_size"] = (want["patch_size"],) * 2
    want["posemb"] = arch["posemb"]
    diff = {k: (want[k], got[k]) for k in got if want.get(k) != got[k]}
    if diff:
        raise ValueError(
            "The checkpoint does not hold the registry's architecture "
            f"({arch['variant']}): "
            + ", ".join(f"{k} {w} expected, {g} found" for k, (w, g) in diff.items())
        )


def _default_preprocessor(model, entry):
    if entry is not None and entry.get("preprocessor"):
        return ViTImageClassifierPreprocessor(**entry["preprocessor"])
    return ViTImageClassifierPreprocessor(
        model.backbone.image_size,
        activation=None,
    )


def _dir_classifier(path, num_classes, image_size, load_weights, kwargs):
    backbone_options = {k: kwargs.pop(k) for k in _BACKBONE_OPTIONS if k in kwargs}
    task_path = os.path.join(path, TASK_CONFIG_FILE)
    if os.path.exists(task_path):
        config = _read_json(path, TASK_CONFIG_FILE)
        _check_class(config, ViTClassifier, task_path)
        if "pool_type" in kwargs and kwargs["pool_type"] != config["config"].get(
            "pool_type"
        ):
            raise ValueError(
                f"`pool_type`={kwargs['pool_type']!r} does not fit the preset, "
                f"built with pool_type={config['config'].get('pool_type')!r}."
            )
        kwargs.pop("pool_type", None)
        task_options = dict(kwargs)
        bb = config["config"]["backbone"]
        if not load_weights and image_size is not None:
            backbone_options["image_size"] = list(image_size)
        if not load_weights and num_classes is not None:
            task_options["num_classes"] = num_classes
        config = _override(config, task_options)
        config["config"]["backbone"] = _override(bb, backbone_options)
        model = _deserialize(config)
        if load_weights:
            model.backbone.load_weights(os.path.join(path, MODEL_WEIGHTS_FILE))
            task_weights = os.path.join(path, TASK_WEIGHTS_FILE)
            if os.path.exists(task_weights):
                keras.saving.load_weights(
                    model, task_weights, objects_to_skip=_backbone_layers(model)
                )
    else:
        if num_classes is None:
            raise ValueError(
                f"The preset {path!r} holds only a backbone (no {TASK_CONFIG_FILE}): "
                "pass `num_classes` for a new head, or use ViTBackbone.from_preset."
            )
        # Without weights the size is set in the config; with weights it is
        # resampled below, together with a new head.
        backbone = _dir_backbone(
            path, None if load_weights else image_size, load_weights, backbone_options
        )
        pool = kwargs.pop("pool_type", "tok" if backbone.class_token else "gap")
        model = ViTClassifier(backbone, num_classes, pool_type=pool, **kwargs)
    if load_weights and (
        (image_size is not None and tuple(image_size) != model.backbone.image_size)
        or (num_classes is not None and num_classes != model.num_classes)
    ):
        from keras_scalevit.transfer import build_transfer_model

        model = build_transfer_model(
            model,
            image_size=image_size,
            num_classes=model.num_classes if num_classes is None else num_classes,
            head_bias_init=kwargs.get("head_bias_init", 0.0),
        )
    return model


def _dir_backbone(path, image_size, load_weights, options):
    config_path = os.path.join(path, CONFIG_FILE)
    config = _read_json(path, CONFIG_FILE)
    _check_class(config, ViTBackbone, config_path)
    if not load_weights and image_size is not None:
        options = {**options, "image_size": list(image_size)}
    backbone = _deserialize(_override(config, options))
    if load_weights:
        backbone.load_weights(os.path.join(path, MODEL_WEIGHTS_FILE))
        if image_size is not None and tuple(image_size) != backbone.image_size:
            from keras_scalevit.transfer import build_transfer_model

            backbone = build_transfer_model(
                backbone, image_size=image_size, num_classes=0
            ).backbone
    return backbone


def load_preprocessor(preset):
    """The preset's `ViTImageClassifierPreprocessor` (None if it has none).

    Registry presets of public checkpoints need no download for this.

    Example:
    >>> from keras_scalevit.models.preset_utils import load_preprocessor
    >>> load_preprocessor("vit_s16_i1k_300ep").pp_string
    'resize_small(256)|central_crop(224)|value_range(-1.0, 1.0)'
    >>> load_preprocessor("vit_digits").class_names[:3]
    ['0', '1', '2']
    """
    if _is_entry_only(preset):
        entry = get_preset_entry(preset)
        return ViTImageClassifierPreprocessor(**entry["preprocessor"])
    kind, path, entry = resolve(preset)
    if kind == "dir":
        pre = os.path.join(path, PREPROCESSOR_CONFIG_FILE)
        if not os.path.exists(pre):
            return None
        config = _read_json(path, PREPROCESSOR_CONFIG_FILE)
        _check_class(config, ViTImageClassifierPreprocessor, pre)
        return _deserialize(config)
    if entry is not None and entry.get("preprocessor"):
        return ViTImageClassifierPreprocessor(**entry["preprocessor"])
    return None


def _is_entry_only(preset):
    """A registry .npz preset whose preprocessor is known without a download."""
    if not isinstance(preset, str):
        return False
    entry = get_preset_entry(preset)
    return entry is not None and not entry.get("packaged")


def load_classifier(
    preset, *, num_classes=None, image_size=None, load_weights=True, **kwargs
):
    """Implements `ViTClassifier.from_preset` (see there)."""
    check_kwargs("ViTClassifier.from_preset", kwargs, _CLASSIFIER_OPTIONS)
    if not isinstance(load_weights, bool):
        raise TypeError(f"`load_weights` must be True or False, got {load_weights!r}.")
    num_classes = _check_classes_arg(num_classes)
    image_size = _check_size_arg(image_size)
    kwargs = dict(kwargs)
    if not load_weights and _is_entry_only(preset):
        kind, path, entry = "npz", None, get_preset_entry(preset)
    else:
        kind, path, entry = resolve(preset)
    if kind == "dir":
        model = _dir_classifier(path, num_classes, image_size, load_weights, kwargs)
        pre_file = os.path.join(path, PREPROCESSOR_CONFIG_FILE)
        pre = None
        if os.path.exists(pre_file):
            config = _read_json(path, PREPROCESSOR_CONFIG_FILE)
            _check_class(config, ViTImageClassifierPreprocessor, pre_file)
            pre = _deserialize(config)
    else:
        model = _npz_model(path, entry, num_classes, image_size, load_weights, kwargs)
        pre = _default_preprocessor(model, entry)
    if pre is not None:
        if tuple(pre.image_size) != tuple(model.backbone.image_size):
            pre = pre.with_image_size(model.backbone.image_size)
        if num_classes is not None and pre.class_names is not None:
            names = class_names(pre.class_names)
            if len(names) != model.num_classes:
                config = pre.get_config()
                config["class_names"] = None
                pre = ViTImageClassifierPreprocessor.from_config(config)
    model.preprocessor = pre
    return model


def load_backbone(preset, *, image_size=None, load_weights=True, **kwargs):
    """Implements `ViTBackbone.from_preset` (see there)."""
    check_kwargs("ViTBackbone.from_preset", kwargs, _BACKBONE_OPTIONS)
    if not isinstance(load_weights, bool):
        raise TypeError(f"`load_weights` must be True or False, got {load_weights!r}.")
    image_size = _check_size_arg(image_size)
    if not load_weights and _is_entry_only(preset):
        kind, path, entry = "npz", None, get_preset_entry(preset)
    else:
        kind, path, entry = resolve(preset)
    if kind == "dir":
        return _dir_backbone(path, image_size, load_weights, dict(kwargs))
    return _npz_model(path, entry, 0, image_size, load_weights, dict(kwargs)).backbone


# ------------------------------------------------------- from a training config


def preprocessor_from_pp(pp_string, image_size, *, class_names=None, activation=None):
    """A `ViTImageClassifierPreprocessor` for a big_vision evaluation pp string.

    Accepts ``[decode|]resize(S)|[central_crop(C)|]value_range(a, b)`` and
    ``[decode|]resize_small(S)|central_crop(C)|value_range(a, b)`` (label ops such
    as ``onehot`` and ``keep`` are ignored); anything else raises ``ValueError``.

    Example:
    >>> from keras_scalevit.models.preset_utils import preprocessor_from_pp
    >>> pre = preprocessor_from_pp(
    ...     "decode|resize(10)|central_crop(8)|value_range(-1, 1)|onehot(10)", 8)
    >>> pre.pp_string
    'resize(10)|central_crop(8)|value_range(-1.0, 1.0)'
    """
    from keras_scalevit.data.builder import parse_op_spec, split_pp_string

    ops = []
    for spec in split_pp_string(pp_string):
        name, args, kw = parse_op_spec(spec)
        if name in ("decode", "onehot", "keep", "copy"):
            continue
        ops.append((name, args, kw))
    names = [o[0] for o in ops]
    size = _check_size_arg(image_size)

    def fail():
        return ValueError(
            f"`pp_string`={pp_string!r} is not a resize / central crop / value_range "
            "pipeline that a preset preprocessor can store."
        )

    if not ops or names[0] not in ("resize", "resize_small"):
        raise fail()
    resize, rargs, rkw = ops[0]
    if rkw or len(rargs) != 1:
        raise fail()
    rest = ops[1:]
    resize_size = rargs[0]
    if rest and rest[0][0] == "central_crop":
        crop = rest.pop(0)[1]
        if crop and _check_size_arg(crop[0]) != size:
            raise fail()
    elif _check_size_arg(resize_size) != size or resize != "resize":
        raise fail()
    else:
        resize_size = None
    value_range = (-1.0, 1.0)
    if rest and rest[0][0] == "value_range":
        _, vargs, vkw = rest.pop(0)
        if vkw or len(vargs) not in (0, 2):
            raise fail()
        value_range = tuple(float(v) for v in vargs) if vargs else value_range
    if rest:
        raise fail()
    return ViTImageClassifierPreprocessor(
        size,
        resize=resize,
        resize_size=resize_size,
        value_range=value_range,
        class_names=class_names,
        activation=activation,
    )


def save_trained_preset(model, config, preset_dir, metadata=None):
    """Saves a model trained by ``keras_scalevit.train`` as a preset directory.

    The preprocessor is the config's validation pp string
    (``config.evals.val.pp_fn``), the activation follows ``config.loss``
    (``softmax_xent`` / ``sigmoid_xent``) and the class names are the TFDS
    data set's label names when it has them.

    Args:
        model: the trained `ViTClassifier`.
        config: the training config (``ml_collections.ConfigDict`` or dict).
        preset_dir: directory to write, e.g. ``workdir/preset``.
        metadata: optional JSON-serialisable dict (e.g. the test accuracy).

    Returns:
        ``preset_dir``.
    """
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    val = (cfg.get("evals") or {}).get("val") or {}  # evals may be None
    pp = val.get("pp_fn") or cfg.get("pp_eval")
    activation = {"softmax_xent": "softmax", "sigmoid_xent": "sigmoid"}.get(
        cfg.get("loss")
    )
    names = None
    data = val.get("data") or cfg.get("input", {}).get("data", {})
    try:
        from keras_scalevit.data import get_builder

        feature = get_builder(data["name"], data_dir=data.get("data_dir")).info.features
        names = list(feature["label"].names)
        if len(names) != model.num_classes:
            names = None
    except Exception:  # no prepared data set or no label names: none recorded
        names = None
    if pp:
        model.preprocessor = preprocessor_from_pp(
            pp, model.backbone.image_size, class_names=names, activation=activation
        )
    extra = dict(training_config=cfg.get("model", {}), loss=cfg.get("loss"))
    extra.update(metadata or {})
    return save_classifier(model, preset_dir, json.loads(json.dumps(extra)))


# ----------------------------------------------------------------- class names


def class_names(spec):
    """Class names: a shipped list's name (``"imagenet1k"``...) or a list.

    Example:
    >>> from keras_scalevit.models.preset_utils import class_names
    >>> names = class_names("imagenet21k")
    >>> len(names), class_names("imagenet1k")[:2]
    (21843, ['tench', 'goldfish'])
    """
    if spec is None or isinstance(spec, list):
        return spec
    if spec not in CLASS_NAME_LISTS:
        raise ValueError(
            f"`class_names` must be a list or one of {CLASS_NAME_LISTS}, got {spec!r}."
        )
    path = os.path.join(PACKAGE_PRESETS_DIR, "class_names", f"{spec}.txt")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t")[1].split(",")[0] for line in f]


def decode_predictions(logits, preset, top=5):
    """Top-k class names and scores for a batch of logits.

    Scores use the preset's pre-training activation (softmax or sigmoid). For
    registry presets the class names are known without a download.

    Args:
        logits: array ``(n, num_classes)`` (e.g. ``model.predict(images)``).
        preset: a preset handle, or a `ViTImageClassifierPreprocessor`.
        top: int. How many classes per image.

    Returns:
        A list (one per image) of ``top`` ``(class_name, score)`` pairs, best
        first.

    Example:
    >>> import numpy as np, keras_scalevit
    >>> logits = np.zeros((1, 10), "float32")
    >>> logits[0, 7] = 5.0
    >>> keras_scalevit.decode_predictions(logits, "vit_digits", top=2)[0][0][0]
    '7'
    """
    top = check_positive_int("top", top)
    if isinstance(preset, ViTImageClassifierPreprocessor):
        pre = preset
    else:
        pre = load_preprocessor(preset)
    logits = np.asarray(keras.ops.convert_to_numpy(logits))
    if logits.ndim != 2:
        raise ValueError(
            f"`logits` must be (num_images, num_classes), got shape {logits.shape}."
        )
    names = class_names(pre.class_names) if pre is not None else None
    if names is None:
        raise ValueError(
            f"The preset {preset!r} has no class names (e.g. an embedding model)."
        )
    if len(names) != logits.shape[1]:
        raise ValueError(
            f"`logits` has {logits.shape[1]} classes; the preset {preset!r} names "
            f"{len(names)}."
        )
    scores = pre.scores(logits)
    out = []
    for row in scores:
        idx = np.argsort(-row, kind="stable")[:top]
        out.append([(names[i], float(row[i])) for i in idx])
    return out


# ------------------------------------------------------------- predict helper


class _PreprocessedImages(keras.utils.PyDataset):
    def __init__(self, images, preprocessor, batch_size):
        super().__init__()
        self.images = images
        self.preprocessor = preprocessor
        self.batch_size = batch_size

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, i):
        chunk = self.images[i * self.batch_size : (i + 1) * self.batch_size]
        return self.preprocessor._preprocess_numpy(chunk)


def preprocess_for_predict(model, x, batch_size):
    """Wraps raw images (array or list) so ``predict`` preprocesses them."""
    pre = getattr(model, "preprocessor", None)
    if pre is None or not isinstance(x, (np.ndarray, list, tuple)):
        return x, batch_size
    if isinstance(x, np.ndarray) and x.ndim == 3:
        x = x[None]
    batch_size = 32 if batch_size is None else batch_size
    return _PreprocessedImages(x, pre, batch_size), None


__all__ = [
    "decode_predictions",
    "list_presets",
    "load_backbone",
    "load_classifier",
    "save_backbone",
    "save_classifier",
]
