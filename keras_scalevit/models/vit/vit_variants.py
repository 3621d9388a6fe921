"""ViT variant names: big_vision's table plus the paper's "s" models.

Config as data: each name maps to ``(width, depth, mlp_dim, num_heads)``; a ``/P``
suffix sets the patch size (default 16, as big_vision's `decode_variant`).
"""

import difflib
import re

from keras_scalevit.utils.validation import check_choice, check_positive_int

# name: (width, depth, mlp_dim, num_heads)
VARIANTS = {
    "mu": (32, 1, 128, 2),
    # The paper's smallest models (s/28, s/16); not in big_vision's table.
    "s": (256, 6, 1024, 8),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}

# The paper's model table (Scaling Vision Transformers, Table 2 / spec §1.1).
PAPER_MODELS = (
    "s/28", "s/16", "S/32", "Ti/16", "B/32", "S/16", "B/28", "B/16", "L/16",
    "g/14", "G/14",
)  # fmt: skip

DEFAULT_PATCH_SIZE = 16


def decode_variant(variant):
    """Decodes a variant name such as ``"G/14"`` into model keyword arguments.

    Args:
        variant: str. ``"<name>"`` or ``"<name>/<patch>"`` with a name from
            `VARIANTS` (big_vision's names and the paper's ``s``); case matters
            (``g`` and ``G`` are different models).

    Returns:
        dict with ``width``, ``depth``, ``mlp_dim``, ``num_heads`` and ``patch_size``.

    Example:
    >>> from keras_scalevit.models import decode_variant
    >>> decode_variant("G/14")["width"]
    1664
    """
    if not isinstance(variant, str):
        raise TypeError(
            "`variant` must be a string such as 'B/16', got "
            f"{type(variant).__name__} {variant!r}."
        )
    m = re.fullmatch(r"([^/]+)(?:/(\d+))?", variant)
    if not m or m.group(1) not in VARIANTS:
        name = variant.split("/")[0]
        close = [v for v in VARIANTS if v.lower() == name.lower()]
        close = close or difflib.get_close_matches(name, list(VARIANTS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if name in VARIANTS:
            hint = " (the part after '/' must be the patch size in digits)"
        raise ValueError(
            "`variant` must be a name in "
            f"{sorted(VARIANTS)} with an optional '/<patch size>' suffix, e.g. "
            f"'B/16', got {variant!r}{hint}."
        )
    width, depth, mlp_dim, num_heads = VARIANTS[m.group(1)]
    patch = int(m.group(2)) if m.group(2) else DEFAULT_PATCH_SIZE
    if patch < 1:
        raise ValueError(
            f"`variant` must have a patch size >= 1 after '/', got {variant!r}."
        )
    return dict(
        width=width,
        depth=depth,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        patch_size=patch,
    )


def count_params(variant, image_size=224, pool_type="gap", posemb="learn"):
    """Parameter count of a variant computed from its shapes (no head).

    Args:
        variant: str. A name accepted by `decode_variant`.
        image_size: int. Square image size in pixels.
        pool_type: str. ``"map"`` adds the MAP head's parameters.
        posemb: str. ``"learn"`` counts the position embedding.

    Returns:
        int, the number of parameters.

    Example:
    >>> from keras_scalevit.models import count_params
    >>> round(count_params("G/14") / 1e6, 1)
    1842.8
    """
    c = decode_variant(variant)
    image_size = check_positive_int("image_size", image_size)
    pool_type = check_choice("pool_type", pool_type, ("gap", "map", "tok", "0", "none"))
    posemb = check_choice("posemb", posemb, ("learn", "sincos2d"))
    if image_size % c["patch_size"]:
        raise ValueError(
            f"`image_size` must be a multiple of the patch size {c['patch_size']} of "
            f"{variant!r}, got {image_size}."
        )
    d, depth, m, p = c["width"], c["depth"], c["mlp_dim"], c["patch_size"]
    block = 4 * d * d + 4 * d + 2 * d * m + m + d + 4 * d
    n = (image_size // p) ** 2
    total = depth * block + p * p * 3 * d + d + 2 * d
    if posemb == "learn":
        total += n * d
    if pool_type == "map":
        total += d + 4 * d * d + 4 * d + 2 * d * m + m + d + 2 * d
    if pool_type == "tok":
        total += d
    return total
