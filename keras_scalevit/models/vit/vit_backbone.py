"""The refined ViT encoder as a functional Keras model."""

import keras

from keras_scalevit.models.vit.vit_layers import (
    POSEMB_TYPES,
    ClassToken,
    EncoderBlock,
    LayerNorm,
    PatchEmbedding,
    PositionEmbedding,
    _check_flash_attention,
    _head_policy,
    _pair,
    check_image_shape,
)
from keras_scalevit.models.vit.vit_layout import backbone_layouts, make_layout_map
from keras_scalevit.models.vit.vit_variants import decode_variant
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_kwargs,
    check_positive_int,
    check_probability,
)

# The constructor's arguments (for unknown-keyword checks in `from_variant` & co).
BACKBONE_ARGUMENTS = (
    "image_size",
    "patch_size",
    "width",
    "depth",
    "num_heads",
    "mlp_dim",
    "posemb",
    "class_token",
    "dropout",
    "remat",
    "flash_attention",
    "dtype",
)
# `keras.Model` keywords a functional model takes besides inputs and outputs.
_MODEL_KWARGS = ("name", "trainable")


@keras.saving.register_keras_serializable(package="keras_scalevit")
class ViTBackbone(keras.Model):
    """Vision Transformer encoder (big_vision's `Transformer` with its stem).

    Images ``(n, H, W, 3)`` (float, big_vision feeds [-1, 1]) → patch embedding →
    position embedding → optional class token → ``depth`` pre-LN blocks → final
    LayerNorm (``encoder_norm``). Returns the normalised tokens ``(n, T, width)``
    (``T = h·w``, plus one with ``class_token``).

    Weight paths mirror big_vision's checkpoint names (``embedding/kernel``,
    ``Transformer/encoderblock_3/MlpBlock_0/Dense_0/kernel``, ...).

    Args:
        image_size: int or (int, int). Input height and width; must be divisible by
            the patch size.
        patch_size: int or (int, int).
        width: int. Token width ``D``.
        depth: int. Number of encoder blocks.
        num_heads: int. Attention heads; must divide ``width``.
        mlp_dim: int or None. MLP hidden width; None means ``4 · width``.
        posemb: str. ``"learn"`` or ``"sincos2d"``.
        class_token: bool. Prepend a learned class token (big_vision's ``"tok"``).
        dropout: float. One rate for every dropout site, as big_vision.
        remat: bool. Rematerialise each encoder block in the backward pass
            (`keras.remat`): trades compute for activation memory.
        flash_attention: bool or None. Passed to `keras.ops.dot_product_attention`.
            Off by default (see keras-team/keras#21116).
        dtype: dtype policy, e.g. ``"mixed_bfloat16"``; LayerNorms compute in float32
            and the final LayerNorm outputs float32, as big_vision with ``dtype_mm``.
        **kwargs: `keras.Model` keyword arguments (``name``, ...).

    Example:
    >>> import numpy as np, keras_scalevit
    >>> backbone = keras_scalevit.models.ViTBackbone.from_variant("mu/8", image_size=32)
    >>> tuple(backbone(np.zeros((2, 32, 32, 3), "float32")).shape)
    (2, 16, 32)

    Reference:
    - [Zhai et al., Scaling Vision Transformers](https://arxiv.org/abs/2106.04560)
    - [Dosovitskiy et al., An Image is Worth 16x16 Words](https://arxiv.org/abs/2010.11929)
    """

    def __init__(
        self,
        *,
        image_size,
        patch_size,
        width,
        depth,
        num_heads,
        mlp_dim=None,
        posemb="learn",
        class_token=False,
        dropout=0.0,
        remat=False,
        flash_attention=False,
        dtype=None,
        **kwargs,
    ):
        check_kwargs("ViTBackbone", kwargs, BACKBONE_ARGUMENTS + _MODEL_KWARGS)
        image_size = _pair(image_size, "image_size")
        patch_size = _pair(patch_size, "patch_size")
        width = check_positive_int("width", width)
        depth = check_positive_int("depth", depth)
        num_heads = check_positive_int("num_heads", num_heads)
        if mlp_dim is not None:
            mlp_dim = check_positive_int("mlp_dim", mlp_dim)
        posemb = check_choice("posemb", posemb, POSEMB_TYPES)
        class_token = check_bool("class_token", class_token)
        dropout = check_probability("dropout", dropout)
        remat = check_bool("remat", remat)
        flash_attention = _check_flash_attention(flash_attention)
        for i, axis in enumerate(("height", "width")):
            if image_size[i] % patch_size[i]:
                raise ValueError(
                    f"`image_size`={image_size} is not divisible by `patch_size`="
                    f"{patch_size}: the image {axis} {image_size[i]} must be a "
                    f"multiple of {patch_size[i]} (big_vision would silently drop "
                    "the remaining pixels)."
                )
        if posemb == "sincos2d" and width % 4:
            raise ValueError(
                "`width` must be divisible by 4 for posemb='sincos2d' (sin and cos "
                f"of x and y), got width={width}."
            )
        if width % num_heads:
            raise ValueError(
                f"`num_heads` must divide `width`={width}, got num_heads={num_heads}."
            )
        mlp_dim = mlp_dim or 4 * width
        grid = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        policy = keras.dtype_policies.get(dtype)

        # === Layers ===
        # Built as locals and attached after `super().__init__` (the torch backend
        # refuses sub-module attributes before `Module.__init__`).
        embedding = PatchEmbedding(width, patch_size, dtype=policy, name="embedding")
        pos_embedding = PositionEmbedding(
            grid, posemb, dtype=policy, name="pos_embedding"
        )
        cls_token = ClassToken(dtype=policy, name="cls") if class_token else None
        embedding_dropout = keras.layers.Dropout(dropout, dtype=policy, name="dropout")
        blocks = [
            EncoderBlock(
                num_heads,
                mlp_dim,
                dropout,
                flash_attention,
                remat=remat,
                dtype=policy,
                name=f"encoderblock_{i}",
            )
            for i in range(depth)
        ]
        encoder_norm = LayerNorm(dtype=_head_policy(policy), name="encoder_norm")

        # === Functional model ===
        images = keras.Input(shape=(*image_size, 3), name="images")
        x = embedding(images)
        x = pos_embedding(x)
        if cls_token is not None:
            x = cls_token(x)
        x = embedding_dropout(x)
        # The scope gives the weights big_vision's `Transformer/...` paths.
        with keras.name_scope("Transformer"):
            for block in blocks:
                x = block(x)
            x = encoder_norm(x)
        super().__init__(inputs=images, outputs=x, dtype=policy, **kwargs)
        self.embedding = embedding
        self.pos_embedding = pos_embedding
        self.cls = cls_token
        self.blocks = blocks
        self.encoder_norm = encoder_norm

        # === Config ===
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.posemb = posemb
        self.class_token = class_token
        self.dropout = dropout
        self.remat = remat
        self.flash_attention = flash_attention
        self.grid_size = grid
        # `keras.Model(inputs, outputs)` ignores `dtype` (its policy stays the
        # global one), so the policy given here is kept for `get_config`.
        self._policy_config = policy

    def __call__(self, *args, **kwargs):
        # Checked before Keras' call machinery, so a wrong image shape is named
        # plainly (static shapes only: safe inside compiled steps).
        images = args[0] if args else kwargs.get("inputs")
        if images is not None and hasattr(images, "shape"):
            check_image_shape("images", images.shape, self.image_size)
        return super().__call__(*args, **kwargs)

    @classmethod
    def from_variant(cls, variant, *, image_size=224, **kwargs):
        """Builds a backbone from a variant name such as ``"B/16"`` or ``"G/14"``.

        Args:
            variant: str. See `keras_scalevit.models.decode_variant`.
            image_size: int or (int, int).
            **kwargs: other constructor arguments; they override the variant's.

        Example:
        >>> import keras_scalevit
        >>> keras_scalevit.models.ViTBackbone.from_variant("mu/8", image_size=32).width
        32
        """
        check_kwargs(
            f"{cls.__name__}.from_variant",
            kwargs,
            tuple(a for a in BACKBONE_ARGUMENTS if a != "image_size") + _MODEL_KWARGS,
        )
        return cls(image_size=image_size, **{**decode_variant(variant), **kwargs})

    @classmethod
    def from_preset(cls, preset, *, image_size=None, load_weights=True, **kwargs):
        """Builds a backbone from a preset (see `ViTClassifier.from_preset`).

        The backbone returns the encoder's tokens; for a checkpoint's pooled
        embedding (e.g. SigLIP's MAP output) use
        ``ViTClassifier.from_preset(preset, num_classes=0)``.

        Args:
            preset: a registry or vanity name, a preset directory, a ``.npz``
                path or URL, or an ``hf://`` / ``kaggle://`` handle.
            image_size: int, (int, int) or None. Another size resamples the
                learned position embedding.
            load_weights: bool. False builds the architecture only.
            **kwargs: ``dtype``, ``remat``, ``dropout``, ``flash_attention``.

        Example:
        >>> import keras_scalevit
        >>> backbone = keras_scalevit.models.ViTBackbone.from_preset("vit_digits")
        >>> backbone.output_shape
        (None, 16, 64)
        """
        from keras_scalevit.models import preset_utils

        return preset_utils.load_backbone(
            preset, image_size=image_size, load_weights=load_weights, **kwargs
        )

    def save_to_preset(self, preset_dir, metadata=None):
        """Saves the backbone as a keras-hub preset directory.

        Writes ``config.json``, ``model.weights.h5`` and ``metadata.json``.

        Example:
        >>> import os, tempfile, keras_scalevit
        >>> backbone = keras_scalevit.models.ViTBackbone.from_variant(
        ...     "mu/8", image_size=16)
        >>> path = backbone.save_to_preset(os.path.join(tempfile.mkdtemp(), "p"))
        >>> sorted(os.listdir(path))
        ['config.json', 'metadata.json', 'model.weights.h5']
        """
        from keras_scalevit.models import preset_utils

        return preset_utils.save_backbone(self, preset_dir, metadata)

    @staticmethod
    def get_layout_map(
        device_mesh,
        *,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
        fsdp=True,
    ):
        """The encoder's `keras.distribution.LayoutMap` on ``device_mesh``.

        Attention heads and the MLP hidden dimension go on the model axis (tensor
        parallelism); with ``fsdp=True`` the width of every big tensor goes on the
        data axis (fully-sharded data parallelism); small vectors are replicated.
        See `keras_scalevit.models.vit.vit_layout` for the table, and
        `keras_scalevit.distribution.make_distribution` for the ready-made strategies.

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
        >>> layout_map = keras_scalevit.models.ViTBackbone.get_layout_map(mesh)
        >>> layout_map["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"].axes
        ('batch', 'model')
        """
        layouts = backbone_layouts(
            model_parallel_dim_name=model_parallel_dim_name,
            data_parallel_dim_name=data_parallel_dim_name,
            fsdp=fsdp,
        )
        return make_layout_map(
            device_mesh,
            layouts,
            model_parallel_dim_name=model_parallel_dim_name,
            data_parallel_dim_name=data_parallel_dim_name,
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self._policy_config),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "width": self.width,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "posemb": self.posemb,
            "class_token": self.class_token,
            "dropout": self.dropout,
            "remat": self.remat,
            "flash_attention": self.flash_attention,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
