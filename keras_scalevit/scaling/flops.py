"""Compute accounting in the paper's convention.

*Scaling Vision Transformers* (Zhai et al., arXiv 2106.04560) lists forward GFLOPs per
image for every model of its study (spec §1.1, its model table). The numbers come
out, to every digit the table prints, of this count:

- matrix multiplications only, **a multiply-add is 2 FLOPs**;
- counted: the patch-embedding convolution (``2·N·P²·3·D``), per encoder block the
  query/key/value/output projections and the two MLP matmuls
  (``2·N·(4·D² + 2·D·M)``) and the two attention products ``Q·Kᵀ`` and
  ``softmax·V`` (``4·N²·D``);
- not counted: biases, LayerNorms, softmax, GELU, residual additions, the position
  embedding, and the **head** (MAP pooling and classifier). Counting the MAP head
  would change e.g. s/16 at 384 px from 7.7 to 7.9 GFLOPs and B/16 at 224 px from
  34.9 to 35.4, so the table excludes it; ``include_head=True`` adds it.

Training compute is **3 × forward** per example seen (forward pass, plus a backward
pass that costs two forwards: gradients with respect to activations and to
weights), the usual convention of scaling-law studies.

The paper plots compute as TPU-v3 core-days ("All models are trained on TPUv3,
thus total compute is measured in TPUv3 core-days", its §2): cores × wall time of
the actual runs. Its text gives no FLOPs-to-core-days rate, no utilisation and no
core-days of any single run, so the conversion cannot be pinned from the paper.
`tpu_v3_core_days` converts FLOPs at a utilisation *you* state, from the public
TPU-v3 peak (123 TFLOP/s bfloat16 per chip, two cores per chip: 61.5 TFLOP/s per
core, Cloud TPU's system-architecture page). For scale: a later paper's table
(Swin V2, Table 2, "TPUv3 core days ... copied from the original papers") gives
ViT-G/14 ">30k" core-days; with the paper's ~20.5e9 images seen at 224 px that is
at most ~37% of peak.
"""

from keras_scalevit.models.vit.vit_variants import decode_variant
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_int,
    check_kwargs,
    check_non_negative_float,
    check_positive_int,
    check_probability,
)

TPU_V3_PEAK_FLOPS_PER_CORE = 61.5e12  # 123 TFLOP/s (bfloat16) per chip, 2 cores.
SECONDS_PER_DAY = 86_400

POOL_TYPES = ("gap", "map", "tok", "0", "none")
_SHAPE_KEYS = ("width", "depth", "mlp_dim", "num_heads", "patch_size")


def model_shape(variant, **overrides):
    """The shape fields of a variant, with explicit overrides (as `from_variant`).

    Args:
        variant: str, e.g. ``"G/14"`` (see `keras_scalevit.models.decode_variant`).
        **overrides: ``width``, ``depth``, ``mlp_dim`` (None: 4·width),
            ``num_heads``, ``patch_size``.

    Returns:
        dict with ``width``, ``depth``, ``mlp_dim``, ``num_heads``, ``patch_size``.

    Example:
    >>> from keras_scalevit.scaling import model_shape
    >>> model_shape("mu/2", width=64, depth=2, mlp_dim=None)["mlp_dim"]
    256
    """
    check_kwargs("model_shape", overrides, _SHAPE_KEYS)
    shape = decode_variant(variant)
    shape.update(overrides)
    if shape["mlp_dim"] is None:
        shape["mlp_dim"] = 4 * shape["width"]
    for key in _SHAPE_KEYS:
        shape[key] = check_positive_int(key, shape[key])
    if shape["width"] % shape["num_heads"]:
        raise ValueError(
            f"`num_heads` must divide `width`={shape['width']}, got "
            f"{shape['num_heads']}."
        )
    return shape


def flops_per_image(
    variant,
    image_size=224,
    *,
    pool_type="map",
    num_classes=0,
    include_head=False,
    **overrides,
):
    """Forward FLOPs for one image, in the paper's convention (module docstring).

    Args:
        variant: str, e.g. ``"G/14"``.
        image_size: int. Square image side in pixels (a multiple of the patch size
            is not required: the stem drops the remainder, as the paper's count).
        pool_type: one of ``"gap"``, ``"map"``, ``"tok"``, ``"0"``, ``"none"``.
            ``"tok"`` adds the class token to the sequence; ``"map"`` matters only
            with ``include_head``.
        num_classes: int >= 0. Classifier size; counted only with ``include_head``.
        include_head: bool. Also count the MAP pooling and the classifier (the
            paper's table does not).
        **overrides: shape fields overriding the variant's (``width``, ``depth``,
            ``mlp_dim``, ``num_heads``, ``patch_size``).

    Returns:
        int, FLOPs (not GFLOPs).

    Example:
    >>> from keras_scalevit.scaling import flops_per_image
    >>> round(flops_per_image("G/14") / 1e9, 1)  # the paper: 963.6 GFLOPs
    963.6
    """
    image_size = check_positive_int("image_size", image_size)
    pool_type = check_choice("pool_type", pool_type, POOL_TYPES)
    num_classes = check_int("num_classes", num_classes, minimum=0)
    include_head = check_bool("include_head", include_head)
    s = model_shape(variant, **overrides)
    d, m, p = s["width"], s["mlp_dim"], s["patch_size"]
    n = (image_size // p) ** 2
    if n == 0:
        raise ValueError(
            f"`image_size` must be at least the patch size {p}, got {image_size}."
        )
    stem = 2 * n * p * p * 3 * d
    t = n + 1 if pool_type == "tok" else n
    block = 2 * t * (4 * d * d + 2 * d * m) + 4 * t * t * d
    total = stem + s["depth"] * block
    if include_head:
        if pool_type == "map":
            # One probe query attends over the t tokens, then a LayerNorm + MLP.
            total += 2 * d * d * 2 + 2 * t * d * d * 2 + 4 * t * d + 2 * 2 * d * m
        total += 2 * d * num_classes
    return total


def train_flops(variant, image_size=224, examples_seen=1, **kwargs):
    """Training FLOPs: 3 × the forward FLOPs per image × examples seen.

    Args:
        variant: str, e.g. ``"B/16"``.
        image_size: int.
        examples_seen: int. Images processed in training (steps × batch size).
        **kwargs: `flops_per_image` keyword arguments (``pool_type``,
            ``include_head``, shape overrides, ...).

    Returns:
        int, FLOPs.

    Example:
    >>> from keras_scalevit.scaling import train_flops
    >>> # ViT-B/16 for 7 epochs of ImageNet-21k-sized data (13M images).
    >>> round(train_flops("B/16", 224, 7 * 13_000_000) / 1e18, 2)
    9.54
    """
    examples_seen = check_int("examples_seen", examples_seen, minimum=0)
    return 3 * flops_per_image(variant, image_size, **kwargs) * examples_seen


def tpu_v3_core_days(flops, *, utilization):
    """TPU-v3 core-days that ``flops`` take at a stated fraction of peak.

    ``flops / (61.5e12 · utilization · 86400)``: the public bfloat16 peak per
    TPU-v3 core. The paper measures core-days (cores × wall time) and publishes
    no utilisation, so there is no default: state the one you assume (e.g. the
    ~0.37 that ViT-G/14's ">30k core-days", as a later paper quotes it, implies
    at most; see the module docstring).

    Args:
        flops: number >= 0, e.g. `train_flops(...)`.
        utilization: number in (0, 1], the model FLOPs utilisation.

    Returns:
        float, core-days.

    Example:
    >>> from keras_scalevit.scaling import train_flops, tpu_v3_core_days
    >>> # ViT-B/16, 7 epochs of 13M images, at 40% of peak.
    >>> round(tpu_v3_core_days(train_flops("B/16", 224, 7 * 13_000_000),
    ...                        utilization=0.4), 1)
    4.5
    """
    flops = check_non_negative_float("flops", flops)
    utilization = check_probability("utilization", utilization, allow_one=True)
    if utilization == 0:
        raise ValueError("`utilization` must be in (0, 1], got 0.")
    return flops / (TPU_V3_PEAK_FLOPS_PER_CORE * utilization * SECONDS_PER_DAY)
