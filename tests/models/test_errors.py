"""Bad inputs: each raises a clear error that names the argument and the value."""

import numpy as np
import pytest

from keras_scalevit.convert import (
    from_big_vision,
    load_big_vision_weights,
    to_big_vision,
)
from keras_scalevit.models import (
    PositionEmbedding,
    ViTBackbone,
    ViTClassifier,
    decode_variant,
    posemb_sincos2d,
    resample_posemb,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def mu8():
    return ViTClassifier.from_variant(
        "mu/8", num_classes=3, image_size=16, pool_type="map"
    )


@pytest.mark.parametrize("name", ["X/16", "b/16", "Giant", "B/16/2", "B/x"])
def test_unknown_variant(name):
    with pytest.raises(ValueError) as e:
        decode_variant(name)
    assert "variant" in str(e.value) and repr(name) in str(e.value)


def test_unknown_variant_in_constructor():
    with pytest.raises(ValueError, match=r"variant.*'Q/8'"):
        ViTClassifier.from_variant("Q/8", num_classes=3, image_size=16)


def test_image_size_not_divisible_by_patch():
    with pytest.raises(ValueError) as e:
        ViTBackbone.from_variant("mu/8", image_size=(16, 30))
    msg = str(e.value)
    assert "image_size" in msg and "30" in msg and "patch_size" in msg and "8" in msg


def test_wrong_channel_count(mu8):
    gray = np.zeros((2, 16, 16, 1), "float32")
    with pytest.raises(ValueError) as e:
        mu8(gray)
    msg = str(e.value)
    assert "3" in msg and "(2, 16, 16, 1)" in msg


def test_unknown_pool_type():
    with pytest.raises(ValueError) as e:
        ViTClassifier.from_variant(
            "mu/8", num_classes=3, image_size=16, pool_type="cls"
        )
    assert "pool_type" in str(e.value) and "'cls'" in str(e.value)
    backbone = ViTBackbone.from_variant("mu/8", image_size=16)
    with pytest.raises(ValueError, match=r"pool_type.*'avg'"):
        ViTClassifier(backbone, 3, pool_type="avg")


def test_tok_pool_needs_class_token():
    backbone = ViTBackbone.from_variant("mu/8", image_size=16, class_token=False)
    with pytest.raises(ValueError, match="class_token"):
        ViTClassifier(backbone, 3, pool_type="tok")


def test_unknown_posemb():
    with pytest.raises(ValueError) as e:
        ViTBackbone.from_variant("mu/8", image_size=16, posemb="sincos")
    assert "posemb" in str(e.value) and "'sincos'" in str(e.value)
    with pytest.raises(ValueError, match=r"posemb.*'rope'"):
        PositionEmbedding((2, 2), posemb="rope")


def test_sincos2d_width_not_divisible_by_4():
    with pytest.raises(ValueError) as e:
        ViTBackbone(
            image_size=16,
            patch_size=8,
            width=30,
            depth=1,
            num_heads=2,
            posemb="sincos2d",
        )
    assert "width" in str(e.value) and "30" in str(e.value)
    with pytest.raises(ValueError, match="width=6"):
        posemb_sincos2d(2, 2, 6)


def test_bad_num_classes_and_rep_size():
    backbone = ViTBackbone.from_variant("mu/8", image_size=16)
    with pytest.raises(ValueError, match=r"num_classes.*-1"):
        ViTClassifier(backbone, -1)
    with pytest.raises(TypeError, match=r"rep_size.*'big'"):
        ViTClassifier(backbone, 3, rep_size="big")


def test_resample_non_square_grid():
    with pytest.raises(ValueError, match=r"square.*\(4, 6\)"):
        resample_posemb(np.zeros((1, 16, 8), "float32"), (4, 6))


# --- checkpoints that do not fit ----------------------------------------------------


def test_checkpoint_mis_shaped_keys(mu8):
    other = ViTClassifier.from_variant(
        "mu/8", num_classes=3, image_size=16, pool_type="map", mlp_dim=64
    )
    with pytest.raises(ValueError) as e:
        load_big_vision_weights(mu8, to_big_vision(other))
    msg = str(e.value)
    assert "Mis-shaped" in msg
    for key in (
        "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel: checkpoint (32, 64) "
        "vs model (32, 128)",
        "MAPHead_0/MlpBlock_0/Dense_1/kernel",
    ):
        assert key in msg


def test_checkpoint_missing_keys(mu8):
    params = to_big_vision(mu8)
    del params["MAPHead_0/probe"]
    del params["Transformer/encoderblock_0/LayerNorm_1/bias"]
    with pytest.raises(ValueError) as e:
        load_big_vision_weights(mu8, params)
    msg = str(e.value)
    assert "Missing" in msg
    assert "MAPHead_0/probe" in msg
    assert "Transformer/encoderblock_0/LayerNorm_1/bias" in msg


def test_checkpoint_unexpected_keys(mu8):
    params = to_big_vision(mu8)
    params["Transformer/encoderblock_1/LayerNorm_0/scale"] = np.ones(32, "float32")
    params["cls"] = np.zeros((1, 1, 32), "float32")
    with pytest.raises(ValueError) as e:
        load_big_vision_weights(mu8, params)
    msg = str(e.value)
    assert "Unexpected" in msg
    assert "Transformer/encoderblock_1/LayerNorm_0/scale" in msg and "'cls'" in msg


def test_failed_load_leaves_model_unchanged(mu8):
    before = [w.copy() for w in mu8.get_weights()]
    params = {k: v + 1.0 for k, v in to_big_vision(mu8).items()}
    params["extra/kernel"] = np.zeros((2, 2), "float32")
    with pytest.raises(ValueError, match="extra/kernel"):
        load_big_vision_weights(mu8, params)
    assert all(
        np.array_equal(a, b) for a, b in zip(before, mu8.get_weights(), strict=True)
    )


def test_from_big_vision_disagreeing_arguments(mu8):
    params = to_big_vision(mu8)
    with pytest.raises(ValueError, match=r"pool_type.*'gap'.*'map'"):
        from_big_vision(params, pool_type="gap")
    with pytest.raises(ValueError, match=r"posemb.*'sincos2d'"):
        from_big_vision(params, posemb="sincos2d")
    with pytest.raises(ValueError, match=r"pool_type.*'avg'"):
        from_big_vision(params, pool_type="avg")


def test_not_a_vit_checkpoint():
    with pytest.raises(ValueError, match="embedding/kernel"):
        from_big_vision({"params/foo/bar": np.zeros(3, "float32")})


def test_learned_posemb_to_non_square_grid(mu8):
    """A learned posemb can only be resampled between square grids (big_vision)."""
    rect = ViTClassifier.from_variant(
        "mu/8", num_classes=3, image_size=(16, 32), pool_type="map"
    )
    with pytest.raises(ValueError) as e:
        load_big_vision_weights(rect, to_big_vision(mu8))
    assert "pos_embedding: checkpoint (1, 4, 32) vs model (1, 8, 32)" in str(e.value)
