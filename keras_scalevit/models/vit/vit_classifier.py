"""ViT classifier: backbone + pooling + optional representation layer + head."""

import numbers

import keras
import numpy as np
from keras import ops

from keras_scalevit.models.vit.vit_backbone import (
    _MODEL_KWARGS,
    BACKBONE_ARGUMENTS,
    ViTBackbone,
)
from keras_scalevit.models.vit.vit_layers import (
    MAPHead,
    _head_policy,
    check_image_shape,
)
from keras_scalevit.models.vit.vit_layout import (
    backbone_layouts,
    head_layouts,
    make_layout_map,
)
from keras_scalevit.models.vit.vit_variants import decode_variant
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_kwargs,
)

POOL_TYPES = ("gap", "map", "tok", "0", "none")


@keras.saving.register_keras_serializable(package="keras_scalevit")
class ViTClassifier(keras.Model):
    """ViT with big_vision's pooling heads, representation layer and classifier.

    ``pool_type`` pools the backbone's tokens: ``"gap"`` (mean), ``"map"`` (multi-head
    attention pooling, the paper's ViT-g/G head), ``"tok"`` (class token), ``"0"``
    (first token, no class token added) or ``"none"`` (every token). An optional
    ``pre_logits`` Dense + tanh (``rep_size``) follows, then the ``head`` Dense. With
    ``num_classes=0`` the model returns the representation (the few-shot features),
    as big_vision does.

    Args:
        backbone: a `keras_scalevit.models.ViTBackbone`. For ``pool_type="tok"`` it
            must have ``class_token=True``.
        num_classes: int. Head size; 0 returns the representation.
        pool_type: str. One of ``"gap"``, ``"map"``, ``"tok"``, ``"0"``, ``"none"``.
        rep_size: bool or int. False: no representation layer; True: Dense(width) +
            tanh; an int k: Dense(k) + tanh.
        head_zeroinit: bool. Initialise the head kernel to zeros (big_vision default).
        head_bias_init: float. Initial head bias (big_vision's ``init_head_bias``;
            the paper uses -10 with the sigmoid loss).
        **kwargs: `keras.Model` keyword arguments (``name``, ...).

    Example:
    >>> import numpy as np, keras_scalevit
    >>> model = keras_scalevit.models.ViTClassifier.from_variant(
    ...     "mu/8", num_classes=10, image_size=32, pool_type="map")
    >>> tuple(model(np.zeros((2, 32, 32, 3), "float32")).shape)
    (2, 10)

    Reference:
    - [Zhai et al., Scaling Vision Transformers](https://arxiv.org/abs/2106.04560)
    """

    def __init__(
        self,
        backbone,
        num_classes,
        *,
        pool_type="gap",
        rep_size=False,
        head_zeroinit=True,
        head_bias_init=0.0,
        **kwargs,
    ):
        check_kwargs("ViTClassifier", kwargs, _MODEL_KWARGS)
        if not isinstance(backbone, ViTBackbone):
            raise TypeError(
                "`backbone` must be a keras_scalevit.models.ViTBackbone, got "
                f"{type(backbone).__name__}."
            )
        num_classes = check_int("num_classes", num_classes, minimum=0)
        pool_type = check_choice("pool_type", pool_type, POOL_TYPES)
        if pool_type == "tok" and not backbone.class_token:
            raise ValueError(
                "`pool_type`='tok' needs a backbone built with class_token=True."
            )
        rep_size = _check_rep_size(rep_size)
        head_zeroinit = check_bool("head_zeroinit", head_zeroinit)
        head_bias_init = check_float("head_bias_init", head_bias_init)
        policy = _head_policy(backbone.dtype_policy)
        rep_units = backbone.width if rep_size is True else rep_size

        # === Layers === (attached after `super().__init__`, see ViTBackbone)
        map_head = (
            MAPHead(
                backbone.num_heads,
                backbone.mlp_dim,
                backbone.flash_attention,
                dtype=policy,
                name="MAPHead_0",
            )
            if pool_type == "map"
            else None
        )
        pre_logits = (
            keras.layers.Dense(
                rep_units,
                activation="tanh",
                kernel_initializer="lecun_normal",
                dtype=policy,
                name="pre_logits",
            )
            if rep_units
            else None
        )
        head = (
            keras.layers.Dense(
                num_classes,
                kernel_initializer="zeros" if head_zeroinit else "lecun_normal",
                bias_initializer=keras.initializers.Constant(head_bias_init),
                dtype=policy,
                name="head",
            )
            if num_classes
            else None
        )

        # === Functional model ===
        images = keras.Input(shape=(*backbone.image_size, 3), name="images")
        tokens = backbone(images)
        if pool_type == "map":
            x = map_head(tokens)
        elif pool_type == "gap":
            x = ops.mean(tokens, axis=1)
        elif pool_type in ("tok", "0"):
            x = tokens[:, 0]
        else:
            x = tokens
        if pre_logits is not None:
            x = pre_logits(x)
        representation = x
        if head is not None:
            x = head(x)
        super().__init__(inputs=images, outputs=x, **kwargs)
        self.backbone = backbone
        self.map_head = map_head
        self.pre_logits = pre_logits
        self.head = head

        # === Config ===
        self.num_classes = num_classes
        self.pool_type = pool_type
        self.rep_size = rep_size
        self.head_zeroinit = head_zeroinit
        self.head_bias_init = head_bias_init
        self._representation = representation

    def __call__(self, *args, **kwargs):
        # As ViTBackbone: a wrong image shape is named before Keras' call machinery.
        images = args[0] if args else kwargs.get("inputs")
        if images is not None and hasattr(images, "shape"):
            check_image_shape("images", images.shape, self.backbone.image_size)
        return super().__call__(*args, **kwargs)

    @property
    def representation_model(self):
        """A `keras.Model` (sharing weights) from images to the pre-logits.

        The representation big_vision's few-shot evaluators use (``pre_logits``);
        the model itself when ``num_classes=0``.

        Example:
        >>> import numpy as np, keras
        >>> from keras_scalevit.models import ViTClassifier
        >>> model = ViTClassifier.from_variant(
        ...     "mu/8", num_classes=10, image_size=16, pool_type="gap")
        >>> rep = model.representation_model
        >>> features = rep(np.zeros((2, 16, 16, 3), "float32"))
        >>> keras.ops.convert_to_numpy(features).shape
        (2, 32)
        >>> rep.count_params() < model.count_params()
        True
        """
        if self.head is None:
            return self
        if getattr(self, "_representation_model", None) is None:
            self._representation_model = keras.Model(
                self.input, self._representation, name=f"{self.name}_representation"
            )
        return self._representation_model

    @classmethod
    def from_variant(
        cls,
        variant,
        *,
        num_classes,
        image_size=224,
        pool_type="gap",
        rep_size=False,
        head_zeroinit=True,
        head_bias_init=0.0,
        name=None,
        **backbone_kwargs,
    ):
        """Builds a classifier from a variant name such as ``"B/16"`` or ``"G/14"``.

        Args:
            variant: str. See `keras_scalevit.models.decode_variant`.
            num_classes: int. Head size; 0 for the representation only.
            image_size: int or (int, int).
            pool_type, rep_size, head_zeroinit, head_bias_init: see the class.
            name: optional model name.
            **backbone_kwargs: `ViTBackbone` arguments (``posemb``, ``dropout``,
                ``remat``, ``dtype``, ...), overriding the variant's.

        Example:
        >>> import keras_scalevit
        >>> model = keras_scalevit.models.ViTClassifier.from_variant(
        ...     "mu/8", num_classes=0, image_size=32, pool_type="map")
        >>> model.output_shape
        (None, 32)
        """
        check_kwargs(
            f"{cls.__name__}.from_variant",
            backbone_kwargs,
            tuple(a for a in BACKBONE_ARGUMENTS if a != "image_size"),
        )
        pool_type = check_choice("pool_type", pool_type, POOL_TYPES)
        config = {**decode_variant(variant), **backbone_kwargs}
        config.setdefault("class_token", pool_type == "tok")
        backbone = ViTBackbone(image_size=image_size, **config)
        return cls(
            backbone,
            num_classes,
            pool_type=pool_type,
            rep_size=rep_size,
            head_zeroinit=head_zeroinit,
            head_bias_init=head_bias_init,
            name=name,
        )

    # === Presets (keras_scalevit/models/preset_utils.py) ===
    # The preset's `ViTImageClassifierPreprocessor` (set by `from_preset`; None
    # otherwise). A plain object: not part of the model's weights or saved state.
    preprocessor = None

    @classmethod
    def from_preset(
        cls, preset, *, num_classes=None, image_size=None, load_weights=True, **kwargs
    ):
        """Builds a classifier from a preset, with its preprocessor attached.

        Args:
            preset: a registry name (`keras_scalevit.list_presets()`) or a
                big_vision vanity name (``"howto-i21k-B/16"``), a preset
                directory, a big_vision ``.npz`` path (``"file.npz:img"`` for a
                tower), an ``http(s)://`` or ``gs://`` URL of a ``.npz``, or an
                ``hf://`` / ``kaggle://`` handle of a keras-hub-format preset.
            num_classes: int or None. None keeps the preset's head; another
                count builds a fresh zero-initialised head (fine-tuning); 0
                drops it (the model returns the representation).
            image_size: int, (int, int) or None. Another size resamples the
                learned position embedding (big_vision's `resample_posemb`)
                and rescales the preprocessor's resize.
            load_weights: bool. False builds the architecture only.
            **kwargs: ``dtype``, ``remat``, ``dropout``, ``flash_attention``,
                ``pool_type`` (for ``.npz`` files without a MAP head or class
                token) and ``head_bias_init`` (for a new head).

        Example:
        >>> import numpy as np, keras_scalevit
        >>> model = keras_scalevit.models.ViTClassifier.from_preset("vit_digits")
        >>> images = np.zeros((2, 8, 8, 3), "uint8")  # raw digits, 0..255
        >>> model.predict(images, verbose=0).shape
        (2, 10)
        """
        from keras_scalevit.models import preset_utils

        return preset_utils.load_classifier(
            preset,
            num_classes=num_classes,
            image_size=image_size,
            load_weights=load_weights,
            **kwargs,
        )

    def save_to_preset(self, preset_dir, metadata=None):
        """Saves the classifier as a keras-hub preset directory.

        Writes ``config.json``, ``model.weights.h5``, ``task.json``,
        ``task.weights.h5``, ``preprocessor.json`` (when a preprocessor is
        attached) and ``metadata.json`` (versions, parameter count, date and
        ``metadata``), the layout ``keras_hub.upload_preset`` takes.

        Args:
            preset_dir: directory to write (created if needed).
            metadata: optional JSON-serialisable dict added to ``metadata.json``.

        Example:
        >>> import os, tempfile, keras_scalevit
        >>> model = keras_scalevit.models.ViTClassifier.from_preset("vit_digits")
        >>> path = model.save_to_preset(os.path.join(tempfile.mkdtemp(), "p"))
        >>> sorted(os.listdir(path))  # doctest: +NORMALIZE_WHITESPACE
        ['config.json', 'metadata.json', 'model.weights.h5', 'preprocessor.json',
         'task.json', 'task.weights.h5']
        """
        from keras_scalevit.models import preset_utils

        return preset_utils.save_classifier(self, preset_dir, metadata)

    def predict(self, x, batch_size=None, **kwargs):
        """`keras.Model.predict`; raw images go through ``self.preprocessor``.

        With a preprocessor attached (``from_preset``), an array ``(n, H, W, 3)``
        or a list of ``(H, W, 3)`` images (uint8 or float in [0, 255], any size)
        is resized and scaled as the checkpoint was evaluated; datasets and
        generators are passed through unchanged (as in keras-hub, the task's
        ``predict`` expects raw images). Arrays that are already model inputs
        (floats in [-1, 1] at the model's size) would be scaled twice: call the
        model on them, or set ``model.preprocessor = None`` first.
        """
        from keras_scalevit.models import preset_utils

        x, batch_size = preset_utils.preprocess_for_predict(self, x, batch_size)
        return super().predict(x, batch_size=batch_size, **kwargs)

    @staticmethod
    def get_layout_map(
        device_mesh,
        *,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
        fsdp=True,
    ):
        """The classifier's `keras.distribution.LayoutMap`: backbone and heads.

        As `ViTBackbone.get_layout_map`, plus the MAP head (heads and MLP hidden
        dimension on the model axis), ``pre_logits`` (units on the model axis) and
        ``head`` (classes on the model axis); with ``fsdp=True`` their input width
        on the data axis.

        Args:
            device_mesh: `keras.distribution.DeviceMesh`.
            model_parallel_dim_name: str. The mesh axis for tensor parallelism.
            data_parallel_dim_name: str. The mesh axis for data parallelism.
            fsdp: bool. Shard the remaining large dimension on the data axis.

        Returns:
            `keras.distribution.LayoutMap`.

        Example:
        >>> import keras, keras_scalevit
        >>> mesh = keras.distribution.DeviceMesh(
        ...     (1, 1), ("batch", "model"), ["cpu:0"])
        >>> layout_map = keras_scalevit.models.ViTClassifier.get_layout_map(
        ...     mesh, fsdp=False)
        >>> layout_map["head/kernel"].axes, layout_map["head/bias"].axes
        ((None, 'model'), ('model',))
        """
        kw = dict(
            model_parallel_dim_name=model_parallel_dim_name,
            data_parallel_dim_name=data_parallel_dim_name,
        )
        layouts = {
            **backbone_layouts(fsdp=fsdp, **kw),
            **head_layouts(fsdp=fsdp, **kw),
        }
        return make_layout_map(device_mesh, layouts, **kw)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "num_classes": self.num_classes,
            "pool_type": self.pool_type,
            "rep_size": self.rep_size,
            "head_zeroinit": self.head_zeroinit,
            "head_bias_init": self.head_bias_init,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["backbone"], dict):
            config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


def _check_rep_size(rep_size):
    """False, True or a positive int (``numpy`` ints too); 0 is not allowed."""
    if isinstance(rep_size, (bool, np.bool_)):
        return bool(rep_size)
    if not isinstance(rep_size, numbers.Integral):
        raise TypeError(
            "`rep_size` must be False (no representation layer), True (width units) "
            f"or an integer >= 1, got {rep_size!r}."
        )
    if rep_size < 1:
        raise ValueError(
            "`rep_size` must be False (no representation layer), True (width units) "
            f"or an integer >= 1, got {rep_size!r}."
        )
    return int(rep_size)
