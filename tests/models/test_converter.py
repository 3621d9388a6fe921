"""Converter round trips and checkpoint layouts (spec §1.6, §1.8, §2)."""

import keras
import numpy as np
import pytest
from conftest import (
    BV_FIXTURES,
    fixture_path,
    load_fixture,
    model_fixture_names,
    rel_err,
)

from keras_scalevit.convert import (
    from_big_vision,
    infer_config,
    load_big_vision_weights,
    normalize_checkpoint,
    to_big_vision,
)
from keras_scalevit.models import ViTBackbone, ViTClassifier

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _np(x):
    return keras.ops.convert_to_numpy(x)


# Model fixtures stored in the modern per-block layout under ``params/``.
MODERN = model_fixture_names(
    lambda v: (
        v.get("kind") == "model"
        and not v["model_kwargs"].get("scan")
        and not any(a.startswith("opt/target/") for a in v.get("arrays", {}))
    )
)


def _bv_params(name):
    data = load_fixture(f"models/{name}")
    return {k[len("params/") :]: v for k, v in data.items() if k.startswith("params/")}


def _pool(manifest, name):
    pool = manifest["files"][f"models/{name}"]["model_kwargs"].get("pool_type", "gap")
    return pool if pool in ("gap", "0", "none") else None


def test_modern_fixture_list(bv_manifest):
    assert len(MODERN) == 8  # 10 model files minus the scan and legacy layouts
    assert "vit_map_learn_scan.npz" not in MODERN
    assert "vit_tok_learn_rep24_legacy.npz" not in MODERN


@pytest.mark.parametrize("name", MODERN)
def test_checkpoint_round_trip_is_exact(bv_manifest, name):
    """to_big_vision(from_big_vision(ckpt)) gives back exactly the same arrays."""
    params = _bv_params(name)
    entry = bv_manifest["files"][f"models/{name}"]
    model = from_big_vision(
        BV_FIXTURES / "models" / name,
        image_size=tuple(entry["image_hw"]),
        pool_type=_pool(bv_manifest, name),
    )
    back = to_big_vision(model)
    assert sorted(back) == sorted(params)
    for k, v in params.items():
        assert back[k].dtype == np.float32, k
        assert back[k].shape == v.shape, k
        assert np.array_equal(back[k], v), k


@pytest.mark.parametrize("name", MODERN)
def test_model_names_and_shapes_match_big_vision(bv_manifest, name):
    """A model built from the fixture's big_vision kwargs (not via the converter)
    has exactly big_vision's parameter names and shapes (spec §1.6)."""
    entry = bv_manifest["files"][f"models/{name}"]
    kw = dict(entry["model_kwargs"])
    if "variant" in kw:
        model = ViTClassifier.from_variant(
            kw["variant"],
            num_classes=kw["num_classes"],
            image_size=tuple(entry["image_hw"]),
            pool_type=kw.get("pool_type", "gap"),
        )
    else:
        pool = kw.get("pool_type", "gap")
        backbone = ViTBackbone(
            image_size=tuple(entry["image_hw"]),
            patch_size=tuple(kw["patch_size"]),
            width=kw["width"],
            depth=kw["depth"],
            num_heads=kw["num_heads"],
            mlp_dim=kw["mlp_dim"],
            posemb=kw.get("posemb", "learn"),
            class_token=pool == "tok",
        )
        model = ViTClassifier(
            backbone,
            kw["num_classes"],
            pool_type=pool,
            rep_size=kw.get("rep_size", False),
        )
    ours = {k: v.shape for k, v in to_big_vision(model).items()}
    ref = {k: v.shape for k, v in _bv_params(name).items()}
    assert ours == ref


def test_scan_checkpoint_round_trips_to_loop_layout():
    scan = from_big_vision(fixture_path("models/vit_map_learn_scan.npz"))
    loop = _bv_params("vit_map_learn.npz")
    back = to_big_vision(scan)
    assert sorted(back) == sorted(loop)
    for k, v in loop.items():
        assert np.array_equal(back[k], v), k


def test_legacy_layout_normalised():
    """opt/target prefix, pre-Linen numbering, posemb class slot folded into cls."""
    legacy = load_fixture("models/vit_tok_learn_rep24_legacy.npz")
    raw = {
        k[len("opt/target/") :]: v
        for k, v in legacy.items()
        if k.startswith("opt/target/")
    }
    pe = raw["Transformer/posembed_input/pos_embedding"]
    assert pe.shape == (1, 10, 32)  # 3x3 grid + the class slot
    assert (
        "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in raw
    )
    params = normalize_checkpoint(BV_FIXTURES / "models/vit_tok_learn_rep24_legacy.npz")
    modern_names = set(_bv_params("vit_tok_learn_rep24.npz"))
    assert set(params) == modern_names
    np.testing.assert_array_equal(params["pos_embedding"], pe[:, 1:])
    np.testing.assert_allclose(params["cls"], raw["cls"] + pe[:, :1], rtol=0, atol=0)
    blk = "Transformer/encoderblock_1/"
    np.testing.assert_array_equal(
        params[blk + "MlpBlock_0/Dense_0/kernel"],
        raw[blk + "MlpBlock_3/Dense_0/kernel"],
    )
    np.testing.assert_array_equal(
        params[blk + "LayerNorm_1/scale"], raw[blk + "LayerNorm_2/scale"]
    )


def test_infer_config_from_fixtures(bv_manifest):
    for name, entry in bv_manifest["files"].items():
        if not name.startswith("models/") or entry.get("kind") != "model":
            continue
        kw = entry["model_kwargs"]
        if "variant" in kw:
            continue
        cfg = infer_config(normalize_checkpoint(BV_FIXTURES / name))
        assert cfg["patch_size"] == tuple(kw["patch_size"]), name
        for k in ("width", "depth", "num_heads", "mlp_dim", "num_classes"):
            assert cfg[k] == kw[k], (name, k)
        assert cfg["posemb"] == kw["posemb"], name
        rep = kw.get("rep_size", False)
        assert cfg["rep_size"] == (kw["width"] if rep is True else rep), name
        pool = kw.get("pool_type", "gap")
        assert cfg["pool_type"] == (pool if pool in ("map", "tok") else None), name


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pool_type="map", rep_size=16, posemb="learn"),
        dict(pool_type="tok", rep_size=False, posemb="learn"),
        dict(pool_type="gap", rep_size=True, posemb="sincos2d"),
    ],
    ids=["map_rep16", "tok", "gap_sincos_rep"],
)
def test_random_model_round_trip_outputs(kwargs):
    keras.utils.set_random_seed(0)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=4, image_size=(16, 24), head_zeroinit=False, **kwargs
    )
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 24, 3)).astype("float32")
    params = to_big_vision(model)
    pool = kwargs["pool_type"] if kwargs["pool_type"] == "gap" else None
    again = from_big_vision(params, image_size=(16, 24), pool_type=pool)
    assert again.pool_type == kwargs["pool_type"]
    assert again.backbone.posemb == kwargs["posemb"]
    assert np.array_equal(_np(again(images)), _np(model(images)))
    back = to_big_vision(again)
    assert sorted(back) == sorted(params)
    assert all(np.array_equal(back[k], params[k]) for k in params)


def test_num_classes_zero_returns_representation():
    data = load_fixture("models/vit_map_learn.npz")
    model = from_big_vision(BV_FIXTURES / "models/vit_map_learn.npz", num_classes=0)
    assert model.head is None
    assert "head/kernel" not in to_big_vision(model)
    rep = _np(model(data["inputs/images"]))
    assert rel_err(rep, data["outputs/pre_logits"]) <= 1e-5  # float32 round-off


def test_new_head_for_fine_tuning():
    data = load_fixture("models/vit_map_learn.npz")
    model = from_big_vision(BV_FIXTURES / "models/vit_map_learn.npz", num_classes=11)
    head = to_big_vision(model)
    assert head["head/kernel"].shape == (64, 11)
    assert not np.any(head["head/kernel"])  # zero-init head (big_vision's default)
    rep = _np(model.representation_model(data["inputs/images"]))
    assert rel_err(rep, data["outputs/pre_logits"]) <= 1e-5


def test_skip_head_keeps_model_head():
    src = ViTClassifier.from_variant("mu/8", num_classes=3, image_size=16)
    dst = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=16, head_zeroinit=False
    )
    before = _np(dst.head.kernel).copy()
    load_big_vision_weights(dst, to_big_vision(src), skip_head=True)
    np.testing.assert_array_equal(_np(dst.head.kernel), before)
    np.testing.assert_array_equal(
        _np(dst.backbone.embedding.kernel), _np(src.backbone.embedding.kernel)
    )


def test_image_tower_subtree(tmp_path):
    """A SigLIP-style file: the image tower under params/img/, a text tower beside."""
    params = _bv_params("vit_variant_mu8_map.npz")
    data = load_fixture("models/vit_variant_mu8_map.npz")
    arrays = {f"params/img/{k}": v for k, v in params.items()}
    arrays["params/txt/Embed_0/embedding"] = np.zeros((7, 4), np.float32)
    arrays["params/t"] = np.zeros((1,), np.float32)
    path = tmp_path / "two_towers.npz"
    np.savez(path, **arrays)
    model = from_big_vision(f"{path}:img", image_size=16)
    logits = _np(model(data["inputs/images"]))
    assert rel_err(logits, data["outputs/logits"]) <= 1e-5  # float32 round-off


def test_bfloat16_npz_is_read(tmp_path):
    """bfloat16 leaves stored by NumPy as 2-byte void load as their exact values."""
    import ml_dtypes

    params = _bv_params("vit_variant_mu8_map.npz")
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in params.items()}
    path = tmp_path / "bf16.npz"
    np.savez(path, **{k: v.view("V2") for k, v in bf16.items()})
    model = from_big_vision(path, image_size=16)
    back = to_big_vision(model)
    for k, v in bf16.items():
        np.testing.assert_array_equal(back[k], v.astype(np.float32), err_msg=k)
