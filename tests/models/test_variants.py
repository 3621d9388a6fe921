"""Variant names and parameter counts (spec §1.1).

``decode_variant`` is checked against big_vision's own output
(``misc/vit_variants.json``) and the paper's "s"; `count_params` against the
paper's model table and against ``model.count_params()`` of built models.
"""

import json

import numpy as np
import pytest
from conftest import BV_FIXTURES

from keras_scalevit.models import (
    PAPER_MODELS,
    VARIANTS,
    ViTBackbone,
    ViTClassifier,
    count_params,
    decode_variant,
)

# The paper's model table (spec §1.1): params in millions, no head, learned posemb,
# 224 px, GAP-equivalent body (the paper's counts exclude the MAP head and the
# classifier; see the MAP cross-check below).
PAPER_TABLE_M = {
    "s/28": 5.4,
    "s/16": 5.0,
    "S/32": 22.5,
    "Ti/16": 5.5,
    "B/32": 87.5,
    "S/16": 21.7,
    "B/28": 86.9,
    "B/16": 85.8,
    "L/16": 303.3,
    "g/14": 1011.2,
    "G/14": 1842.8,
}


@pytest.fixture(scope="module")
def bv_variants(bv_manifest):
    with open(BV_FIXTURES / "misc/vit_variants.json") as f:
        return json.load(f)


def _patch_pair(cfg):
    p = cfg["patch_size"]
    return tuple(int(v) for v in np.broadcast_to(p, (2,)))


def test_decode_variant_matches_big_vision(bv_variants):
    names = {n.split("/")[0] for n in bv_variants}
    assert names == {
        "mu", "Ti", "S", "M", "B", "L", "So400m", "H", "g", "g-opt", "G", "G-opt", "e"
    }  # fmt: skip
    for name, ref in bv_variants.items():
        got = decode_variant(name)
        for k in ("width", "depth", "mlp_dim", "num_heads"):
            assert got[k] == ref[k], (name, k)
        # big_vision adds patch_size only for a '/P' suffix; the default is 16.
        assert _patch_pair(got) == tuple(ref.get("patch_size", (16, 16))), name


def test_variant_table_is_big_vision_plus_paper_s(bv_variants):
    bv_names = {n for n in bv_variants if "/" not in n}
    assert set(VARIANTS) == bv_names | {"s"}
    s = decode_variant("s/28")
    assert (s["width"], s["depth"], s["mlp_dim"], s["num_heads"]) == (256, 6, 1024, 8)
    assert _patch_pair(s) == (28, 28)
    # case matters: g and G are different models
    assert decode_variant("g")["width"] == 1408 and decode_variant("G")["width"] == 1664


@pytest.mark.parametrize("patch", [1, 2, 3, 7, 8, 14, 16, 28, 32, 60])
def test_any_patch_size(patch):
    cfg = decode_variant(f"B/{patch}")
    assert _patch_pair(cfg) == (patch, patch)
    assert cfg["width"] == 768


def test_any_patch_size_builds():
    bb = ViTBackbone.from_variant("mu/3", image_size=(12, 9))
    assert bb.grid_size == (4, 3)
    assert tuple(bb.output_shape) == (None, 12, 32)


def test_paper_models_listed():
    assert tuple(PAPER_MODELS) == tuple(PAPER_TABLE_M)


@pytest.mark.parametrize("name", list(PAPER_TABLE_M))
def test_paper_table_param_counts(name):
    # The table rounds to 0.1 M: the exact count must lie within 0.05 M.
    got = count_params(name, image_size=224, pool_type="gap", posemb="learn")
    assert abs(got / 1e6 - PAPER_TABLE_M[name]) <= 0.05 + 1e-9, got


@pytest.mark.parametrize(
    "name,pool,expected_m,rounding",
    [
        # spec §1.1 cross-check from big_vision's own init at 224 px, learned posemb.
        ("g/14", "map", 1036.4, 0.05),
        ("G/14", "map", 1881.1, 0.05),
        ("H/14", "gap", 630.8, 0.05),
        ("So400m/14", "map", 427.7, 0.05),
        ("e/14", "map", 3873.0, 0.5),
    ],
)
def test_bigvision_param_counts(name, pool, expected_m, rounding):
    got = count_params(name, image_size=224, pool_type=pool, posemb="learn")
    assert abs(got / 1e6 - expected_m) <= rounding + 1e-9, got


def _extra(width, rep_size, num_classes):
    """Parameters count_params leaves out: the rep layer and the classifier."""
    n = 0
    rep = width if rep_size is True else rep_size
    if rep:
        n += width * rep + rep
    if num_classes:
        n += (rep or width) * num_classes + num_classes
    return n


@pytest.mark.parametrize(
    "variant,image_size,pool,posemb,rep_size,num_classes",
    [
        ("mu/8", 32, "gap", "learn", False, 0),
        ("mu/8", 32, "map", "learn", False, 0),
        ("mu/4", 16, "tok", "learn", 24, 5),
        ("mu/8", 16, "0", "sincos2d", True, 3),
        ("mu/8", 24, "none", "sincos2d", False, 7),
        ("mu/16", 48, "map", "sincos2d", 8, 10),
        ("s/16", 32, "gap", "learn", False, 0),
    ],
)
def test_count_params_matches_built_model(
    variant, image_size, pool, posemb, rep_size, num_classes
):
    model = ViTClassifier.from_variant(
        variant,
        num_classes=num_classes,
        image_size=image_size,
        pool_type=pool,
        rep_size=rep_size,
        posemb=posemb,
    )
    cfg = decode_variant(variant)
    analytic = count_params(
        variant, image_size=image_size, pool_type=pool, posemb=posemb
    )
    body = model.backbone.count_params()
    body += model.map_head.count_params() if model.map_head else 0
    assert body == analytic
    assert model.count_params() == analytic + _extra(
        cfg["width"], rep_size, num_classes
    )
    # No non-trainable weights: sincos2d is a constant, not a variable.
    assert len(model.non_trainable_weights) == 0
