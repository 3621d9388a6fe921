"""Fine-tuning: `build_transfer_model`, Polyak averaging and the transfer config.

The references are independent of the code under test: big_vision's own 48 px
outputs and resampled posemb (``models/vit_map_learn_hires48.npz``), SciPy's
``zoom(order=1)`` (what big_vision's ``resample_posemb`` calls) and a NumPy
momentum + EMA recursion.
"""

import keras
import numpy as np
import pytest
from conftest import BV_FIXTURES, load_fixture, rel_err

import keras_scalevit
from keras_scalevit.configs import transfer as transfer_config
from keras_scalevit.convert import from_big_vision, to_big_vision
from keras_scalevit.models import ViTBackbone, ViTClassifier
from keras_scalevit.optimizers import MomentumHP, from_big_vision_config
from keras_scalevit.transfer import build_transfer_model, ema_optimizer_kwargs

SRC32 = "models/vit_map_learn.npz"
HIRES48 = "models/vit_map_learn_hires48.npz"
TOL = 1e-5  # the manifest's model tolerance (max|diff| / max|ref|)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _weights(model):
    return {v.path: _np(v) for v in model.weights}


def _perturbed(model, seed=0):
    """Gives every weight (head included) non-trivial random values."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(_np(v) + rng.normal(0, 0.3, v.shape).astype("float32"))
    return model


def _tiny(image_size=16, num_classes=4, pool_type="map", **kwargs):
    model = ViTClassifier.from_variant(
        "mu/8",
        num_classes=num_classes,
        image_size=image_size,
        pool_type=pool_type,
        **kwargs,
    )
    return _perturbed(model)


@pytest.fixture(scope="module")
def hires():
    return load_fixture(HIRES48)


# ------------------------------------------------ (a) big_vision's 48 px outputs


def _check_hires(model, hires):
    assert model.backbone.image_size == (48, 48)
    assert model.backbone.grid_size == (6, 6)
    images = hires["inputs/images"]
    assert rel_err(_np(model(images)), hires["outputs/logits"]) <= TOL
    rep = _np(model.representation_model(images))
    assert rel_err(rep, hires["outputs/pre_logits"]) <= TOL


def test_hires48_from_npz_path(hires):
    model = build_transfer_model(BV_FIXTURES / SRC32, image_size=48, num_classes=5)
    _check_hires(model, hires)


def test_hires48_from_npz_subtree_and_mapping(hires, tmp_path):
    # A two-tower style file: the ViT under 'params/img/'.
    params = load_fixture(SRC32)
    tower = tmp_path / "two_tower.npz"
    np.savez(
        tower,
        **{
            f"params/img/{k[len('params/') :]}": v
            for k, v in params.items()
            if k.startswith("params/")
        },
        **{"params/txt/embedding": np.zeros((3, 2), "float32")},
    )
    model = build_transfer_model(f"{tower}:img", image_size=48, num_classes=5)
    _check_hires(model, hires)
    model = build_transfer_model(load_fixture(SRC32), image_size=48, num_classes=5)
    _check_hires(model, hires)


def test_hires48_via_keras_file(hires, tmp_path):
    model32 = from_big_vision(BV_FIXTURES / SRC32)
    assert model32.backbone.image_size == (32, 32)
    path = tmp_path / "pre32.keras"
    model32.save(path)
    model = build_transfer_model(str(path), image_size=48, num_classes=5)
    _check_hires(model, hires)
    # In memory too, and the source is left as it was.
    before = _weights(model32)
    _check_hires(build_transfer_model(model32, image_size=48, num_classes=5), hires)
    after = _weights(model32)
    assert all(np.array_equal(before[k], after[k]) for k in before)


# ------------------------------------------- (b) new head, body copied exactly


@pytest.mark.parametrize("route", ["model", "keras", "npz"])
def test_new_head_and_exact_body(route, tmp_path):
    src = _tiny(image_size=16, num_classes=4)
    if route == "keras":
        init = tmp_path / "src.keras"
        src.save(init)
    elif route == "npz":
        init = tmp_path / "src.npz"
        np.savez(init, **{f"params/{k}": v for k, v in to_big_vision(src).items()})
    else:
        init = src
    model = build_transfer_model(
        init, image_size=16, num_classes=7, head_bias_init=-2.5
    )
    old, new = _weights(src), _weights(model)
    assert sorted(old) == sorted(new)
    body = [k for k in old if not k.startswith("head/")]
    for k in body:
        assert new[k].dtype == old[k].dtype
        np.testing.assert_array_equal(new[k], old[k], err_msg=k)
    assert new["head/kernel"].shape == (32, 7)
    np.testing.assert_array_equal(new["head/kernel"], 0.0)
    np.testing.assert_array_equal(new["head/bias"], np.full(7, -2.5, "float32"))
    assert model.num_classes == 7 and model.pool_type == "map"
    x = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(_np(model(x)), np.full((2, 7), -2.5, "float32"))
    # The representation is the source's.
    np.testing.assert_allclose(
        _np(model.representation_model(x)),
        _np(src.representation_model(x)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_head_kept_reset_or_dropped():
    src = _tiny(image_size=16, num_classes=4)
    old = _weights(src)
    kept = _weights(build_transfer_model(src, image_size=16, num_classes=4))
    np.testing.assert_array_equal(kept["head/kernel"], old["head/kernel"])
    np.testing.assert_array_equal(kept["head/bias"], old["head/bias"])
    for reset in (
        dict(reset_head=True),
        dict(dont_load=["head/kernel", "head/bias"]),
        dict(dont_load=["head/.*"]),
    ):
        new = _weights(
            build_transfer_model(
                src, image_size=16, num_classes=4, head_bias_init=1.0, **reset
            )
        )
        np.testing.assert_array_equal(new["head/kernel"], 0.0)
        np.testing.assert_array_equal(new["head/bias"], 1.0)
    dropped = build_transfer_model(src, image_size=16, num_classes=0)
    assert dropped.head is None and dropped.output_shape == (None, 32)


def test_keras_route_options_and_other_pool_types():
    src = _tiny(image_size=16, num_classes=3, pool_type="tok", dropout=0.1)
    model = build_transfer_model(src, image_size=24, num_classes=2)
    assert model.pool_type == "tok" and model.backbone.class_token
    assert model.backbone.dropout == 0.1  # inherited
    model = build_transfer_model(
        src, image_size=24, num_classes=2, dropout=0.0, dtype="mixed_bfloat16"
    )
    assert model.backbone.dropout == 0.0
    assert model.backbone.embedding.dtype_policy.name == "mixed_bfloat16"
    assert (
        build_transfer_model(
            model, image_size=16, num_classes=2
        ).backbone.embedding.dtype_policy.name
        == "mixed_bfloat16"
    )
    np.testing.assert_array_equal(
        _np(model.backbone.cls.weights[0]), _np(src.backbone.cls.weights[0])
    )
    # gap / sincos2d: nothing to resample, the table is recomputed.
    src = _tiny(image_size=16, num_classes=3, pool_type="gap", posemb="sincos2d")
    model = build_transfer_model(src, image_size=32, num_classes=3)
    assert model.pool_type == "gap" and model.backbone.grid_size == (4, 4)
    # A backbone (no head) as init.
    backbone = ViTBackbone.from_variant("mu/8", image_size=16)
    model = build_transfer_model(
        backbone, image_size=32, num_classes=5, pool_type="gap"
    )
    assert model.num_classes == 5 and model.pool_type == "gap"


def test_config_model_dict_is_checked():
    src = _tiny(image_size=16, num_classes=4)
    ok = dict(variant="mu/8", posemb="learn", rep_size=False, pool_type="map")
    build_transfer_model(src, image_size=16, num_classes=4, **ok)
    build_transfer_model(
        src, image_size=16, num_classes=4, variant="mu/2", patch_size=8
    )


# ------------------------------------ (c) posemb resampling, independent refs


def test_resampled_posemb_equals_big_vision(hires):
    model = build_transfer_model(BV_FIXTURES / SRC32, image_size=48, num_classes=5)
    pe = _np(model.backbone.pos_embedding.weights[0])
    ref = hires["params/pos_embedding"]
    assert pe.shape == ref.shape == (1, 36, 64)
    assert rel_err(pe, ref) <= 1e-6


@pytest.mark.parametrize("new_size", [24, 56, 8])
def test_resampled_posemb_equals_scipy_zoom(new_size):
    from scipy import ndimage

    src = _tiny(image_size=32, num_classes=4)  # 4x4 grid
    model = build_transfer_model(src, image_size=new_size, num_classes=4)
    g = new_size // 8
    old = _np(src.backbone.pos_embedding.weights[0]).astype(np.float64)
    grid = old[0].reshape(4, 4, -1)
    ref = ndimage.zoom(grid, (g / 4, g / 4, 1), order=1).reshape(1, g * g, -1)
    pe = _np(model.backbone.pos_embedding.weights[0])
    assert pe.shape == (1, g * g, 32)
    np.testing.assert_allclose(pe, ref, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ (d) errors


def test_errors(tmp_path):
    src = _tiny(image_size=16, num_classes=4)
    ok = dict(image_size=16, num_classes=4)
    other = tmp_path / "weights.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match=r"`init`=.*unknown file type"):
        build_transfer_model(str(other), **ok)
    with pytest.raises(FileNotFoundError, match="`init`"):
        build_transfer_model(str(tmp_path / "missing.npz"), **ok)
    with pytest.raises(TypeError, match="`init`"):
        build_transfer_model(42, **ok)
    with pytest.raises(TypeError, match="`init`"):
        build_transfer_model(keras.Sequential([keras.Input((3,))]), **ok)
    seq = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    seq.save(tmp_path / "seq.keras")
    with pytest.raises(ValueError, match="`init`=.*Sequential"):
        build_transfer_model(str(tmp_path / "seq.keras"), **ok)
    with pytest.raises(ValueError, match="`image_size`.*not divisible.*8"):
        build_transfer_model(src, image_size=20, num_classes=4)
    with pytest.raises(ValueError, match="`image_size`.*square"):
        build_transfer_model(src, image_size=(16, 32), num_classes=4)
    # Same token count, other grid shape: the table would be silently reinterpreted.
    with pytest.raises(ValueError, match="`image_size`.*1x4 patch grid.*2x2"):
        build_transfer_model(src, image_size=(8, 32), num_classes=4)
    for bad, error in (
        (0, ValueError),
        (-8, ValueError),
        ((16, 0), ValueError),
        ("16", TypeError),
        (16.5, TypeError),
        (True, TypeError),
    ):
        with pytest.raises(error, match="`image_size"):
            build_transfer_model(src, image_size=bad, num_classes=4)
    for bad, error in ((-1, ValueError), (2.5, TypeError), (None, TypeError)):
        with pytest.raises(error, match="`num_classes`"):
            build_transfer_model(src, image_size=16, num_classes=bad)
    with pytest.raises(TypeError, match="`num_classes` must be an integer >= 0"):
        build_transfer_model(src, image_size=16, num_classes=True)
    with pytest.raises(ValueError, match="`pool_type`='gap'.*'map'"):
        build_transfer_model(src, pool_type="gap", **ok)
    with pytest.raises(ValueError, match="`pool_type`"):
        build_transfer_model(src, pool_type="avg", **ok)
    with pytest.raises(ValueError, match="`variant`='B/16'.*width"):
        build_transfer_model(src, variant="B/16", **ok)
    with pytest.raises(ValueError, match="`posemb`='sincos2d'"):
        build_transfer_model(src, posemb="sincos2d", **ok)
    with pytest.raises(ValueError, match="`rep_size`=True"):
        build_transfer_model(src, rep_size=True, **ok)
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument 'depht' \(did you mean 'depth'"
    ):
        build_transfer_model(src, depht=3, **ok)
    with pytest.raises(ValueError, match="`dont_load`.*'embedding/kernel'"):
        build_transfer_model(src, dont_load=["embedding/kernel"], **ok)
    with pytest.raises(ValueError, match="`dont_load`"):
        build_transfer_model(src, dont_load="head/kernel", **ok)
    with pytest.raises(ValueError, match="`reset_head`=False"):
        build_transfer_model(src, image_size=16, num_classes=3, reset_head=False)
    with pytest.raises(ValueError, match="`pool_type`='tok'"):
        build_transfer_model(
            ViTBackbone.from_variant("mu/8", image_size=16), pool_type="tok", **ok
        )


# -------------------------------------------- (e) Polyak (EMA) with MomentumHP


def test_momentum_hp_ema_matches_numpy():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype("float32")
    grads = [rng.normal(size=(5, 3)).astype("float32") for _ in range(4)]
    var = keras.Variable(w0, name="kernel")
    opt = MomentumHP(
        0.1,
        momentum=0.9,
        momentum_dtype="float32",
        global_clipnorm=None,
        **ema_optimizer_kwargs({"ema_momentum": 0.75}),
    )
    assert opt.use_ema and opt.ema_momentum == 0.75
    w = w0.astype(np.float64)
    m = np.zeros_like(w)
    avg = None
    for t, g in enumerate(grads):
        opt.apply([g], [var])
        m = g + np.float32(0.9) * m
        w = w - 0.1 * m
        # Keras' EMA: the first step copies the weights, then m*avg + (1-m)*w.
        avg = w.copy() if t == 0 else 0.75 * avg + 0.25 * w
        np.testing.assert_allclose(_np(var), w, rtol=1e-6, atol=1e-6)
        (average,) = opt._model_variables_moving_average
        np.testing.assert_allclose(_np(average), avg, rtol=1e-6, atol=1e-6)
    opt.finalize_variable_values([var])
    np.testing.assert_allclose(_np(var), avg, rtol=1e-6, atol=1e-6)
    config = MomentumHP.from_config(opt.get_config()).get_config()
    assert config["use_ema"] and config["ema_momentum"] == 0.75


def test_ema_kwargs_from_config():
    assert ema_optimizer_kwargs({}) == {}
    assert ema_optimizer_kwargs({"ema_momentum": None}) == {}
    cfg = transfer_config.get_config("dataset=digits")
    cfg.ema_momentum = 0.999
    opt = from_big_vision_config(cfg, total_steps=300, **ema_optimizer_kwargs(cfg))
    assert isinstance(opt, MomentumHP) and opt.use_ema and opt.ema_momentum == 0.999
    for bad, error in (
        (1.0, ValueError),
        (-0.1, ValueError),
        (float("nan"), ValueError),
        ("0.9", TypeError),
        (True, TypeError),
    ):
        with pytest.raises(error, match="`ema_momentum`"):
            ema_optimizer_kwargs({"ema_momentum": bad})


# ------------------------------------------------------------------ the config


def test_transfer_config_recipe():
    cfg = transfer_config.get_config("dataset=imagenet2012,init=/x/ckpt.npz,res=384")
    assert cfg.model_init == "/x/ckpt.npz" and cfg.image_size == 384
    assert cfg.num_classes == 1000 and cfg.total_steps == 20_000
    assert cfg.input.batch_size == 512 and cfg.loss == "softmax_xent"
    assert cfg.input.pp == (
        "decode|resize_small(448)|random_crop(384)|flip_lr|value_range(-1, 1)|"
        "onehot(1000, key='label', key_result='labels')"
    )
    assert cfg.evals.val.pp_fn.startswith("decode|resize_small(448)|central_crop(384)")
    assert list(cfg.model_load.dont_load) == ["head/kernel", "head/bias"]
    assert cfg.schedule.to_dict() == dict(decay_type="cosine", warmup_steps=500)
    opt = from_big_vision_config(cfg, total_steps=cfg.total_steps)
    assert isinstance(opt, MomentumHP)
    assert opt.momentum == 0.9 and opt.momentum_dtype == "bfloat16"
    assert opt.global_clipnorm == 1.0 and not opt.weight_decay
    assert float(_np(opt.learning_rate)) == pytest.approx(0.01)
    ((pattern, multiplier),) = opt.schedule  # one group: lr * cosine(warmup)
    assert pattern == ".*"
    assert float(_np(multiplier(0))) == 0.0
    assert float(_np(multiplier(500))) == pytest.approx(1.0)
    assert float(_np(multiplier(20_000))) == pytest.approx(0.0, abs=1e-6)
    cfg = transfer_config.get_config(
        "dataset=oxford_iiit_pet,crop=inception_crop,lr=0.03"
    )
    assert cfg.input.pp.startswith("decode|inception_crop(384)|flip_lr")
    assert cfg.lr == 0.03 and cfg.total_steps == 500
    assert cfg.schedule.warmup_steps == 100 and cfg.num_classes == 37
    cfg = transfer_config.get_config("dataset=digits,res=32")
    assert cfg.image_size == 32 and cfg.input.data.name == "scalevit_digits"
    assert "flip_lr" not in cfg.input.pp and "resize(32)" in cfg.input.pp
    for bad in ("dataset=mnist", "crop=center", "res=abc", "foo=1", "res"):
        with pytest.raises(ValueError):
            transfer_config.get_config(bad)


# ------------------------------------------------------------- end to end


def test_train_main_fine_tunes_digits(tmp_path):
    from keras_scalevit import train

    pre = ViTClassifier.from_variant(
        "mu/8", num_classes=10, image_size=8, pool_type="map", patch_size=2
    )
    _perturbed(pre)
    init = tmp_path / "pre8.keras"
    pre.save(init)
    cfg = transfer_config.get_config(f"dataset=digits,init={init},res=16")
    cfg.input.data.data_dir = str(tmp_path / "tfds")
    cfg.input.batch_size = 32
    cfg.total_steps = 4
    cfg.log_training_steps = 2
    cfg.ckpt_steps = 2
    cfg.evals.val.log_steps = 4
    cfg.schedule.warmup_steps = 1
    cfg.verbose = 0
    # 4 steps: XLA compilation costs more than it saves, except on JAX (eager).
    cfg.jit_compile = keras.backend.backend() == "jax"
    final = train.main(cfg, str(tmp_path / "work"))
    assert final["step"] == 4 and 0.0 <= final["val_prec@1"] <= 1.0
    model = keras.saving.load_model(tmp_path / "work" / "model.keras")
    assert model.backbone.image_size == (16, 16)
    assert model.backbone.grid_size == (8, 8) and model.num_classes == 10
    ckpt = train.make_checkpointer(tmp_path / "work")  # Orbax on JAX, else .npz
    try:
        assert ckpt.read()[0]["step"] == 4
    finally:
        ckpt.close()
    assert keras_scalevit.transfer is not None
