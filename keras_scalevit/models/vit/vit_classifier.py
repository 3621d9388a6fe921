"""ViT classifier: backbone + pooling + optional representation layer + head."""

import keras
from keras import ops

from keras_scalevit.models.vit.vit_backbone import ViTBackbone
from keras_scalevit.models.vit.vit_layers import MAPHead, _head_policy
from keras_scalevit.models.vit.vit_layout import (
    backbone_layouts,
    head_layouts,
    make_layout_map,
)
from keras_scalevit.models.vit.vit_variants import decode_variant

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
        if pool_type not in POOL_TYPES:
            raise ValueError(
                f"Unknown `pool_type`={pool_type!r}; allowed values: {POOL_TYPES}."
            )
        if pool_type == "tok" and not backbone.class_token:
            raise ValueError(
                "pool_type='tok' needs a backbone built with class_token=True."
            )
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(
                f"`num_classes` must be an int >= 0; received {num_classes!r}."
            )
        if rep_size is not False and not (
            rep_size is True or (isinstance(rep_size, int) and rep_size > 0)
        ):
            raise ValueError(
                f"`rep_size` must be False, True or a positive int; received {rep_size!r}."
            )
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
        if pool_type not in POOL_TYPES:
            raise ValueError(
                f"Unknown `pool_type`={pool_type!r}; allowed values: {POOL_TYPES}."
            )
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
