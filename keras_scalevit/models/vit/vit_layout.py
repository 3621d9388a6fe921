"""How a ViT's weights are laid out on a device mesh (`keras.distribution.LayoutMap`).

Two mesh axes, as in keras-hub: a data axis (``"batch"``) and a model axis
(``"model"``).

- Tensor parallelism (Megatron-style) uses the model axis: the attention heads of the
  query/key/value/out projections and the MLP hidden dimension (``Dense_0`` columns,
  ``Dense_1`` rows), the representation layer's units and the classes of the head.
- Fully-sharded data parallelism (``fsdp=True``) uses the data axis for the remaining
  large dimension of every big tensor, the token width ``D``: attention and MLP
  kernels, the patch kernel, the learned position embedding, class token, MAP probe,
  representation layer and head kernels. This is what big_vision's FSDP rule arrives
  at for a ViT (it shards each large tensor along an axis divisible by the mesh).
- Small vectors (LayerNorm scales and biases, output biases) are replicated.

Paths are big_vision's (``Transformer/encoderblock_3/MlpBlock_0/Dense_0/kernel``); the
patterns use ``re.fullmatch`` (Keras' `LayoutMap`) and each path matches at most one.
"""

import keras

# Optional leading scope, so the patterns also hold for a ViT nested in another model.
_SCOPE = r"(?:.*/)?"
_BLOCK = _SCOPE + r"Transformer/encoderblock_\d+/"
_MAP = _SCOPE + r"MAPHead_0/"


def _attention_and_mlp(prefix, d, m):
    """Layouts of one attention + MLP pair under ``prefix`` (a regex)."""
    attention = prefix + "MultiHeadDotProductAttention_0/"
    mlp = prefix + "MlpBlock_0/"
    return {
        # (width, heads, head_dim) and (heads, head_dim): heads on the model axis.
        attention + "(?:query|key|value)/kernel": (d, m, None),
        attention + "(?:query|key|value)/bias": (m, None),
        # (heads, head_dim, width): the row-parallel half.
        attention + "out/kernel": (m, None, d),
        # (width, mlp_dim), (mlp_dim,), (mlp_dim, width).
        mlp + "Dense_0/kernel": (d, m),
        mlp + "Dense_0/bias": (m,),
        mlp + "Dense_1/kernel": (m, d),
    }


def backbone_layouts(
    *, model_parallel_dim_name="model", data_parallel_dim_name="batch", fsdp=True
):
    """The ViT encoder's layouts as ``{path regex: axes tuple}``.

    Args:
        model_parallel_dim_name: str. Mesh axis of tensor parallelism.
        data_parallel_dim_name: str. Mesh axis of data parallelism.
        fsdp: bool. Also shard the width of big tensors on the data axis.

    Returns:
        dict mapping a `re.fullmatch` pattern of ``variable.path`` to a tuple of mesh
        axis names (None: not sharded), one per dimension.

    Example:
    >>> from keras_scalevit.models.vit.vit_layout import backbone_layouts
    >>> layouts = backbone_layouts(fsdp=False)
    >>> layouts[r"(?:.*/)?Transformer/encoderblock_\\d+/MlpBlock_0/Dense_0/kernel"]
    (None, 'model')
    """
    d = data_parallel_dim_name if fsdp else None
    m = model_parallel_dim_name
    return {
        # (patch, patch, 3, width); the 3 input channels and patch axes stay whole.
        _SCOPE + "embedding/kernel": (None, None, None, d),
        # (1, tokens, width) and (1, 1, width).
        _SCOPE + "pos_embedding/pos_embedding": (None, None, d),
        _SCOPE + "cls/cls": (None, None, d),
        **_attention_and_mlp(_BLOCK, d, m),
    }


def head_layouts(
    *, model_parallel_dim_name="model", data_parallel_dim_name="batch", fsdp=True
):
    """The classifier heads' layouts (MAP head, ``pre_logits``, ``head``).

    Args:
        model_parallel_dim_name: str. Mesh axis of tensor parallelism.
        data_parallel_dim_name: str. Mesh axis of data parallelism.
        fsdp: bool. Also shard the width of big tensors on the data axis.

    Returns:
        dict ``{path regex: axes tuple}`` as `backbone_layouts`.

    Example:
    >>> from keras_scalevit.models.vit.vit_layout import head_layouts
    >>> head_layouts()[r"(?:.*/)?head/kernel"]
    ('batch', 'model')
    """
    d = data_parallel_dim_name if fsdp else None
    m = model_parallel_dim_name
    return {
        _MAP + "probe": (None, None, d),
        **_attention_and_mlp(_MAP, d, m),
        # (width, rep) and (rep,); (rep or width, classes) and (classes,).
        _SCOPE + "pre_logits/kernel": (d, m),
        _SCOPE + "pre_logits/bias": (m,),
        _SCOPE + "head/kernel": (d, m),
        _SCOPE + "head/bias": (m,),
    }


def make_layout_map(
    device_mesh,
    layouts,
    *,
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
):
    """A `keras.distribution.LayoutMap` on ``device_mesh`` from ``{regex: axes}``.

    Axis names the mesh does not have are dropped (a 1-D ``("batch",)`` mesh has no
    model axis: those dimensions stay whole).

    Args:
        device_mesh: `keras.distribution.DeviceMesh`.
        layouts: dict ``{path regex: axes tuple}``.
        model_parallel_dim_name, data_parallel_dim_name: str, checked against the
            mesh's axis names.

    Returns:
        `keras.distribution.LayoutMap`.

    Example:
    >>> import keras
    >>> from keras_scalevit.models.vit.vit_layout import make_layout_map
    >>> mesh = keras.distribution.DeviceMesh(
    ...     (1, 1), ("batch", "model"), ["cpu:0"])
    >>> layout_map = make_layout_map(mesh, {"head/kernel": ("batch", "model")})
    >>> layout_map["head/kernel"].axes
    ('batch', 'model')
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(
            "`device_mesh` must be a keras.distribution.DeviceMesh, got "
            f"{device_mesh!r}."
        )
    names = tuple(device_mesh.axis_names)
    for arg, name in (
        ("model_parallel_dim_name", model_parallel_dim_name),
        ("data_parallel_dim_name", data_parallel_dim_name),
    ):
        if not isinstance(name, str):
            raise TypeError(f"`{arg}` must be a string, got {name!r}.")
    if model_parallel_dim_name not in names and data_parallel_dim_name not in names:
        raise ValueError(
            f"`device_mesh` axes {names} contain neither `model_parallel_dim_name`="
            f"{model_parallel_dim_name!r} nor `data_parallel_dim_name`="
            f"{data_parallel_dim_name!r}."
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in layouts.items():
        layout_map[pattern] = tuple(a if a in names else None for a in axes)
    return layout_map
