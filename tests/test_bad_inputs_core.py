"""Bad inputs to the models, converter, transfer, optimizers, schedules and losses.

Each case asserts the exception type (``TypeError`` for a wrong kind of value or an
unknown keyword, ``ValueError`` for a bad value, ``FileNotFoundError`` for a missing
file) and that the message names the argument. Values that are legitimately
allowed have a test documenting the behaviour at the end.
"""

import functools
import pickle
import warnings

import keras
import numpy as np
import pytest

from keras_scalevit import losses
from keras_scalevit.convert import (
    from_big_vision,
    load_big_vision_weights,
    load_npz,
    to_big_vision,
)
from keras_scalevit.models import (
    EncoderBlock,
    LayerNorm,
    MAPHead,
    MlpBlock,
    MultiHeadDotProductAttention,
    PatchEmbedding,
    PositionEmbedding,
    ViTBackbone,
    ViTClassifier,
    count_params,
    decode_variant,
    posemb_sincos2d,
    resample_posemb,
)
from keras_scalevit.optimizers import Adafactor, MomentumHP, from_big_vision_config
from keras_scalevit.schedules import BigVisionSchedule, create_learning_rate_schedule
from keras_scalevit.transfer import build_transfer_model, ema_optimizer_kwargs

NAN = float("nan")
INF = float("inf")
TINY = dict(image_size=16, patch_size=8, width=32, depth=1, num_heads=2)
ADAFACTOR_CONFIG = {"optax_name": "big_vision.scale_by_adafactor", "lr": 1e-3}


@functools.cache
def _mu8():
    """The smallest model: mu/8 at 16 px (4 tokens, width 32, one block)."""
    return ViTClassifier.from_variant(
        "mu/8", num_classes=3, image_size=16, pool_type="map"
    )


@functools.cache
def _params():
    return to_big_vision(_mu8())


def _with(key, value):
    params = dict(_params())
    params[key] = value
    return params


def _poisoned(key, bad):
    value = np.array(_params()[key], copy=True)
    value.flat[0] = bad
    return _with(key, value)


def _backbone(**overrides):
    return ViTBackbone(**{**TINY, **overrides})


def _file(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    return str(path)


def _pickle_file(path):
    with open(path, "wb") as f:
        pickle.dump({"embedding/kernel": [1, 2]}, f)


def _object_npz(path):
    np.savez(path, **{"a": np.array([{"x": 1}], dtype=object)})


def _loss(loss, y_true, y_pred):
    return loss(np.asarray(y_true, "float32"), np.asarray(y_pred, "float32"))


# Each case: (function of tmp_path, exception type, regex the message must match).
CASES = {
    # --- models: unknown keywords ------------------------------------------------
    "from_variant_typo": (
        lambda t: ViTClassifier.from_variant(
            "mu/8", num_classes=10, image_size=32, widht=64
        ),
        TypeError,
        r"from_variant got an unexpected keyword argument 'widht' "
        r"\(did you mean 'width'\?\)",
    ),
    "backbone_from_variant_typo": (
        lambda t: ViTBackbone.from_variant("mu/8", image_size=16, depht=2),
        TypeError,
        r"unexpected keyword argument 'depht' \(did you mean 'depth'\?\)",
    ),
    "backbone_typo": (
        lambda t: ViTBackbone(**TINY, mpl_dim=64),
        TypeError,
        r"ViTBackbone got an unexpected keyword argument 'mpl_dim' "
        r"\(did you mean 'mlp_dim'\?\)",
    ),
    "classifier_typo": (
        lambda t: ViTClassifier(_backbone(), 3, pool_typ="map"),
        TypeError,
        r"ViTClassifier got an unexpected keyword argument 'pool_typ'",
    ),
    # --- models: sizes ------------------------------------------------------------
    "depth_negative": (
        lambda t: _backbone(depth=-1),
        ValueError,
        r"`depth` must be an integer >= 1, got -1\.",
    ),
    "depth_zero": (
        lambda t: ViTBackbone.from_variant("mu/8", image_size=16, depth=0),
        ValueError,
        r"`depth` must be an integer >= 1, got 0\.",
    ),
    "patch_size_zero": (
        lambda t: _backbone(patch_size=0),
        ValueError,
        r"`patch_size` must be an integer >= 1, got 0\.",
    ),
    "patch_size_pair_zero": (
        lambda t: _backbone(patch_size=(8, 0)),
        ValueError,
        r"`patch_size\[1\]` must be an integer >= 1, got 0\.",
    ),
    "patch_size_triple": (
        lambda t: _backbone(patch_size=(8, 8, 8)),
        ValueError,
        r"`patch_size` must be an integer >= 1 or a pair of them.*3 entries",
    ),
    "num_heads_zero": (
        lambda t: _backbone(num_heads=0),
        ValueError,
        r"`num_heads` must be an integer >= 1, got 0\.",
    ),
    "num_heads_not_dividing": (
        lambda t: _backbone(num_heads=3),
        ValueError,
        r"`num_heads` must divide `width`=32, got num_heads=3\.",
    ),
    "width_zero": (
        lambda t: _backbone(width=0),
        ValueError,
        r"`width` must be an integer >= 1, got 0\.",
    ),
    "width_string": (
        lambda t: _backbone(width="32"),
        TypeError,
        r"`width` must be an integer >= 1, got '32'\.",
    ),
    "mlp_dim_zero": (
        lambda t: _backbone(mlp_dim=0),
        ValueError,
        r"`mlp_dim` must be an integer >= 1, got 0\.",
    ),
    "image_size_zero": (
        lambda t: _backbone(image_size=0),
        ValueError,
        r"`image_size` must be an integer >= 1, got 0\.",
    ),
    "image_size_negative_pair": (
        lambda t: _backbone(image_size=(16, -16)),
        ValueError,
        r"`image_size\[1\]` must be an integer >= 1, got -16\.",
    ),
    "image_size_string": (
        lambda t: ViTClassifier.from_variant("mu/8", num_classes=3, image_size="16"),
        TypeError,
        r"`image_size` must be an integer >= 1 or a pair of them, got '16'\.",
    ),
    "image_size_fraction": (
        lambda t: _backbone(image_size=16.5),
        TypeError,
        r"`image_size` must be an integer >= 1, got 16\.5\.",
    ),
    "image_size_not_multiple_of_patch": (
        lambda t: _backbone(image_size=(16, 20)),
        ValueError,
        r"`image_size`=\(16, 20\) is not divisible by `patch_size`=\(8, 8\)",
    ),
    "dropout_one": (
        lambda t: _backbone(dropout=1.0),
        ValueError,
        r"`dropout` must be a finite number >= 0 and < 1, got 1\.0\.",
    ),
    "dropout_negative": (
        lambda t: _backbone(dropout=-0.1),
        ValueError,
        r"`dropout` must be .*, got -0\.1\.",
    ),
    "dropout_nan": (
        lambda t: ViTClassifier.from_variant(
            "mu/8", num_classes=3, image_size=16, dropout=NAN
        ),
        ValueError,
        r"`dropout` must be .*, got nan\.",
    ),
    "posemb_unknown": (
        lambda t: _backbone(posemb="sincos"),
        ValueError,
        r"`posemb` must be one of 'learn', 'sincos2d', got 'sincos' "
        r"\(did you mean 'sincos2d'\?\)",
    ),
    "class_token_string": (
        lambda t: _backbone(class_token="yes"),
        TypeError,
        r"`class_token` must be True or False, got 'yes'\.",
    ),
    "remat_int": (
        lambda t: _backbone(remat=1),
        TypeError,
        r"`remat` must be True or False, got 1\.",
    ),
    "flash_attention_string": (
        lambda t: _backbone(flash_attention="auto"),
        TypeError,
        r"`flash_attention` must be True or False, got 'auto'\.",
    ),
    # --- models: classifier --------------------------------------------------------
    "num_classes_bool": (
        lambda t: ViTClassifier(_backbone(), True),
        TypeError,
        r"`num_classes` must be an integer >= 0, got True\.",
    ),
    "num_classes_negative": (
        lambda t: ViTClassifier.from_variant("mu/8", num_classes=-1, image_size=16),
        ValueError,
        r"`num_classes` must be an integer >= 0, got -1\.",
    ),
    "num_classes_fraction": (
        lambda t: ViTClassifier(_backbone(), 2.5),
        TypeError,
        r"`num_classes` must be an integer >= 0, got 2\.5\.",
    ),
    "pool_type_typo": (
        lambda t: ViTClassifier.from_variant(
            "mu/8", num_classes=3, image_size=16, pool_type="mapp"
        ),
        ValueError,
        r"`pool_type` must be one of .*, got 'mapp' \(did you mean 'map'\?\)",
    ),
    "rep_size_zero": (
        lambda t: ViTClassifier(_backbone(), 3, rep_size=0),
        ValueError,
        r"`rep_size` must be False .* or an integer >= 1, got 0\.",
    ),
    "rep_size_string": (
        lambda t: ViTClassifier(_backbone(), 3, rep_size="32"),
        TypeError,
        r"`rep_size` must be False .*, got '32'\.",
    ),
    "head_bias_init_nan": (
        lambda t: ViTClassifier.from_variant(
            "mu/8", num_classes=3, image_size=16, head_bias_init=NAN
        ),
        ValueError,
        r"`head_bias_init` must be a finite number, got nan\.",
    ),
    "head_bias_init_string": (
        lambda t: ViTClassifier(_backbone(), 3, head_bias_init="-10"),
        TypeError,
        r"`head_bias_init` must be a finite number, got '-10'\.",
    ),
    "head_zeroinit_none": (
        lambda t: ViTClassifier(_backbone(), 3, head_zeroinit=None),
        TypeError,
        r"`head_zeroinit` must be True or False, got None\.",
    ),
    "backbone_not_a_backbone": (
        lambda t: ViTClassifier(keras.Sequential([keras.Input((3,))]), 3),
        TypeError,
        r"`backbone` must be a keras_scalevit.models.ViTBackbone, got Sequential\.",
    ),
    "tok_without_class_token": (
        lambda t: ViTClassifier(_backbone(), 3, pool_type="tok"),
        ValueError,
        r"`pool_type`='tok' needs a backbone built with class_token=True",
    ),
    # --- models: inputs at call time ----------------------------------------------
    "gray_image_into_rgb_model": (
        lambda t: _mu8()(np.zeros((2, 16, 16, 1), "float32")),
        ValueError,
        r"`images` must have shape \(\?, 16, 16, 3\) \(images of 16x16 pixels with "
        r"3 RGB channels.*\), got shape \(2, 16, 16, 1\)\.",
    ),
    "image_of_other_size": (
        lambda t: _mu8()(np.zeros((2, 32, 32, 3), "float32")),
        ValueError,
        r"`images` must have shape \(\?, 16, 16, 3\).*got shape \(2, 32, 32, 3\)\.",
    ),
    "image_without_batch_axis": (
        lambda t: _mu8().backbone(np.zeros((16, 16, 3), "float32")),
        ValueError,
        r"`images` must have shape \(\?, 16, 16, 3\).*got shape \(16, 16, 3\)\.",
    ),
    "patch_embedding_gray": (
        lambda t: PatchEmbedding(width=8, patch_size=4)(
            np.zeros((1, 8, 8, 1), "float32")
        ),
        ValueError,
        r"`images` must have shape \(\?, \?, \?, 3\).*got shape \(1, 8, 8, 1\)\.",
    ),
    # --- models: variants and counts ----------------------------------------------
    "variant_not_a_string": (
        lambda t: decode_variant(16),
        TypeError,
        r"`variant` must be a string such as 'B/16', got int 16\.",
    ),
    "variant_wrong_case": (
        lambda t: ViTBackbone.from_variant("b/16"),
        ValueError,
        r"`variant` must be a name in .*, got 'b/16' \(did you mean 'B'\?\)\.",
    ),
    "variant_patch_zero": (
        lambda t: decode_variant("B/0"),
        ValueError,
        r"`variant` must have a patch size >= 1 after '/', got 'B/0'\.",
    ),
    "count_params_image_size": (
        lambda t: count_params("B/16", image_size=0),
        ValueError,
        r"`image_size` must be an integer >= 1, got 0\.",
    ),
    "count_params_not_multiple": (
        lambda t: count_params("B/16", image_size=100),
        ValueError,
        r"`image_size` must be a multiple of the patch size 16 of 'B/16', got 100\.",
    ),
    "count_params_pool_type": (
        lambda t: count_params("B/16", pool_type="avg"),
        ValueError,
        r"`pool_type` must be one of .*, got 'avg'",
    ),
    # --- models: layers -------------------------------------------------------------
    "patch_embedding_width": (
        lambda t: PatchEmbedding(width=0, patch_size=4),
        ValueError,
        r"`width` must be an integer >= 1, got 0\.",
    ),
    "position_embedding_grid": (
        lambda t: PositionEmbedding((0, 2)),
        ValueError,
        r"`grid_size\[0\]` must be an integer >= 1, got 0\.",
    ),
    "position_embedding_token_count": (
        lambda t: PositionEmbedding((2, 2))(np.zeros((1, 6, 8), "float32")),
        ValueError,
        r"PositionEmbedding must have shape \(batch, 4, width\) for "
        r"`grid_size`=\(2, 2\), got shape \(1, 6, 8\)\.",
    ),
    "map_head_num_heads": (
        lambda t: MAPHead(num_heads=0, mlp_dim=8),
        ValueError,
        r"`num_heads` must be an integer >= 1, got 0\.",
    ),
    "map_head_mlp_dim": (
        lambda t: MAPHead(num_heads=2, mlp_dim=-8),
        ValueError,
        r"`mlp_dim` must be an integer >= 1, got -8\.",
    ),
    "encoder_block_dropout": (
        lambda t: EncoderBlock(num_heads=2, mlp_dim=32, dropout=1.5),
        ValueError,
        r"`dropout` must be a finite number >= 0 and < 1, got 1\.5\.",
    ),
    "encoder_block_remat": (
        lambda t: EncoderBlock(num_heads=2, mlp_dim=32, remat="no"),
        TypeError,
        r"`remat` must be True or False, got 'no'\.",
    ),
    "mlp_block_mlp_dim": (
        lambda t: MlpBlock(mlp_dim=0),
        ValueError,
        r"`mlp_dim` must be an integer >= 1, got 0\.",
    ),
    "attention_num_heads": (
        lambda t: MultiHeadDotProductAttention(num_heads=0),
        ValueError,
        r"`num_heads` must be an integer >= 1, got 0\.",
    ),
    "attention_num_heads_not_dividing": (
        lambda t: MultiHeadDotProductAttention(num_heads=3)(
            np.zeros((1, 2, 8), "float32")
        ),
        ValueError,
        r"`num_heads` must divide the input width 8, got 3\.",
    ),
    "layer_norm_epsilon_zero": (
        lambda t: LayerNorm(epsilon=0.0),
        ValueError,
        r"`epsilon` must be a finite number > 0, got 0\.0\.",
    ),
    "layer_norm_epsilon_nan": (
        lambda t: LayerNorm(epsilon=NAN),
        ValueError,
        r"`epsilon` must be a finite number > 0, got nan\.",
    ),
    "sincos_grid": (
        lambda t: posemb_sincos2d(0, 2, 8),
        ValueError,
        r"`h` must be an integer >= 1, got 0\.",
    ),
    "sincos_temperature": (
        lambda t: posemb_sincos2d(2, 2, 8, temperature=-1.0),
        ValueError,
        r"`temperature` must be a finite number > 0, got -1\.0\.",
    ),
    "resample_new_grid": (
        lambda t: resample_posemb(np.zeros((1, 4, 8), "float32"), 0),
        ValueError,
        r"`new_grid` must be an integer >= 1, got 0\.",
    ),
    "resample_posemb_rank": (
        lambda t: resample_posemb(np.zeros((4, 8), "float32"), 4),
        ValueError,
        r"`posemb` must have shape \(1, tokens, width\), got shape \(4, 8\)\.",
    ),
    # --- converter ----------------------------------------------------------------
    "from_big_vision_typo": (
        lambda t: from_big_vision(_params(), widht=8),
        TypeError,
        r"from_big_vision got an unexpected keyword argument 'widht'",
    ),
    "from_big_vision_inferred_argument": (
        lambda t: from_big_vision(_params(), width=64),
        TypeError,
        r"from_big_vision got 'width', which the checkpoint's arrays decide",
    ),
    "from_big_vision_num_classes": (
        lambda t: from_big_vision(_params(), num_classes=-2),
        ValueError,
        r"`num_classes` must be an integer >= 0, got -2\.",
    ),
    "from_big_vision_image_size": (
        lambda t: from_big_vision(_params(), image_size=0),
        ValueError,
        r"`image_size` must be an integer >= 1, got 0\.",
    ),
    "from_big_vision_pool_type": (
        lambda t: from_big_vision(_params(), pool_type="mapp"),
        ValueError,
        r"`pool_type` must be one of .*\(did you mean 'map'\?\)",
    ),
    "from_big_vision_dropout": (
        lambda t: from_big_vision(_params(), dropout=2.0),
        ValueError,
        r"`dropout` must be a finite number >= 0 and < 1, got 2\.0\.",
    ),
    "from_big_vision_pickle_file": (
        lambda t: from_big_vision(_file(t, "ckpt.npz", _pickle_file)),
        ValueError,
        r"`path` must be a \.npz checkpoint .*, got '.*ckpt\.npz', which is not a "
        r"zip archive\.",
    ),
    "from_big_vision_text_file": (
        lambda t: from_big_vision(
            _file(t, "weights.txt", lambda p: p.write_text("not weights"))
        ),
        ValueError,
        r"`path` must be a \.npz checkpoint .*weights\.txt",
    ),
    "from_big_vision_npy_file": (
        lambda t: from_big_vision(
            _file(t, "one.npy", lambda p: np.save(p, np.zeros(3)))
        ),
        ValueError,
        r"`path` must be a \.npz checkpoint .*one\.npy",
    ),
    "from_big_vision_object_array": (
        lambda t: load_npz(_file(t, "objects.npz", _object_npz)),
        ValueError,
        r"`path` must be a \.npz checkpoint of plain arrays, got .*objects\.npz.*"
        r"cannot be read without pickle",
    ),
    "from_big_vision_missing_file": (
        lambda t: from_big_vision(str(t / "missing.npz")),
        FileNotFoundError,
        r"`path` must be an existing \.npz file, got '.*missing\.npz'\.",
    ),
    "from_big_vision_source_type": (
        lambda t: from_big_vision(42),
        TypeError,
        r"`source` must be a path to a \.npz file or a mapping .*, got int\.",
    ),
    "checkpoint_with_nan": (
        lambda t: from_big_vision(_poisoned("MAPHead_0/probe", NAN)),
        ValueError,
        r"holds NaN or infinite values in 1 weight\(s\): MAPHead_0/probe \(1 of 32\)",
    ),
    "checkpoint_with_inf": (
        lambda t: load_big_vision_weights(
            _mu8(), _poisoned("Transformer/encoder_norm/scale", INF)
        ),
        ValueError,
        r"NaN or infinite values .*Transformer/encoder_norm/scale",
    ),
    "checkpoint_with_strings": (
        lambda t: from_big_vision(_with("note", np.array(["hello"]))),
        ValueError,
        r"`source` must map string names to numeric arrays; these entries are "
        r"not: 'note'",
    ),
    "to_big_vision_path": (
        lambda t: to_big_vision("model.keras"),
        TypeError,
        r"`model` must be a keras_scalevit ViTClassifier or ViTBackbone, got str "
        r"\(a path: load it first",
    ),
    "to_big_vision_other_model": (
        lambda t: to_big_vision(keras.Sequential([keras.layers.Dense(2)])),
        TypeError,
        r"`model` must be a keras_scalevit ViTClassifier or ViTBackbone, got "
        r"Sequential\.",
    ),
    "load_weights_other_model": (
        lambda t: load_big_vision_weights(keras.Sequential(), _params()),
        TypeError,
        r"`model` must be a keras_scalevit ViTClassifier",
    ),
    "load_weights_skip_head": (
        lambda t: load_big_vision_weights(_mu8(), _params(), skip_head="yes"),
        TypeError,
        r"`skip_head` must be True or False, got 'yes'\.",
    ),
    # --- transfer -------------------------------------------------------------------
    "transfer_head_bias_init": (
        lambda t: build_transfer_model(
            _mu8(), image_size=16, num_classes=2, head_bias_init=NAN
        ),
        ValueError,
        r"`head_bias_init` must be a finite number, got nan\.",
    ),
    "transfer_reset_head": (
        lambda t: build_transfer_model(
            _mu8(), image_size=16, num_classes=2, reset_head="no"
        ),
        TypeError,
        r"`reset_head` must be True or False, got 'no'\.",
    ),
    "transfer_typo": (
        lambda t: build_transfer_model(
            _mu8(), image_size=16, num_classes=2, dropuot=0.1
        ),
        TypeError,
        r"build_transfer_model got an unexpected keyword argument 'dropuot' "
        r"\(did you mean 'dropout'\?\)",
    ),
    "transfer_dropout": (
        lambda t: build_transfer_model(
            _mu8(), image_size=16, num_classes=2, dropout=1.0
        ),
        ValueError,
        r"`dropout` must be a finite number >= 0 and < 1, got 1\.0\.",
    ),
    "transfer_ema_momentum_nan": (
        lambda t: ema_optimizer_kwargs({"ema_momentum": NAN}),
        ValueError,
        r"`ema_momentum` must be a finite number >= 0 and < 1, got nan\.",
    ),
    # --- optimizers ------------------------------------------------------------------
    "adafactor_negative_lr": (
        lambda t: Adafactor(-1e-3),
        ValueError,
        r"`learning_rate` must be a finite number >= 0, got -0\.001\.",
    ),
    "adafactor_nan_lr": (
        lambda t: Adafactor(NAN),
        ValueError,
        r"`learning_rate` must be a finite number >= 0, got nan\.",
    ),
    "momentum_hp_negative_lr": (
        lambda t: MomentumHP(-0.1),
        ValueError,
        r"`learning_rate` must be a finite number >= 0, got -0\.1\.",
    ),
    "momentum_hp_inf_lr": (
        lambda t: MomentumHP(INF),
        ValueError,
        r"`learning_rate` must be a finite number >= 0, got inf\.",
    ),
    "lr_string": (
        lambda t: Adafactor("0.001"),
        TypeError,
        r"`learning_rate` must be a finite number >= 0 or a "
        r"keras.optimizers.schedules.LearningRateSchedule, got '0\.001'\.",
    ),
    "momentum_hp_momentum_above_one": (
        lambda t: MomentumHP(0.1, momentum=1.5),
        ValueError,
        r"`momentum` must be a finite number >= 0 and < 1, got 1\.5\.",
    ),
    "adafactor_negative_momentum": (
        lambda t: Adafactor(1e-3, momentum=-0.1),
        ValueError,
        r"`momentum` must be a finite number >= 0 and < 1, got -0\.1\.",
    ),
    "global_clipnorm_negative": (
        lambda t: Adafactor(1e-3, global_clipnorm=-1),
        ValueError,
        r"`global_clipnorm` must be a finite number > 0, got -1\.0\.",
    ),
    "global_clipnorm_zero": (
        lambda t: MomentumHP(0.1, global_clipnorm=0.0),
        ValueError,
        r"`global_clipnorm` must be a finite number > 0, got 0\.0\.",
    ),
    "clipnorm_nan": (
        lambda t: MomentumHP(0.1, clipnorm=NAN),
        ValueError,
        r"`clipnorm` must be a finite number > 0, got nan\.",
    ),
    "optimizer_typo": (
        lambda t: Adafactor(1e-3, globl_clipnorm=1.0),
        TypeError,
        r"Adafactor got an unexpected keyword argument 'globl_clipnorm' "
        r"\(did you mean 'global_clipnorm'",
    ),
    "adafactor_epsilon_zero": (
        lambda t: Adafactor(1e-3, epsilon=0.0),
        ValueError,
        r"`epsilon` must be a finite number > 0, got 0\.0\.",
    ),
    "adafactor_beta2_cap_zero": (
        lambda t: Adafactor(1e-3, beta2_cap=0.0),
        ValueError,
        r"`beta2_cap` must be a finite number > 0 and <= 1, got 0\.0\.",
    ),
    "adafactor_beta2_cap_above_one": (
        lambda t: Adafactor(1e-3, beta2_cap=1.001),
        ValueError,
        r"`beta2_cap` must be a finite number > 0 and <= 1, got 1\.001\.",
    ),
    "adafactor_decay_rate": (
        lambda t: Adafactor(1e-3, decay_rate=0.0),
        ValueError,
        r"`decay_rate` must be a finite number > 0, got 0\.0\.",
    ),
    "adafactor_decay_offset": (
        lambda t: Adafactor(1e-3, decay_offset=1.5),
        TypeError,
        r"`decay_offset` must be an integer, got 1\.5\.",
    ),
    "adafactor_clipping_threshold": (
        lambda t: Adafactor(1e-3, clipping_threshold=0.0),
        ValueError,
        r"`clipping_threshold` must be a finite number > 0, got 0\.0\.",
    ),
    "weight_decay_nan": (
        lambda t: Adafactor(1e-3, weight_decay=NAN),
        ValueError,
        r"`weight_decay` must be a finite number >= 0, got nan\.",
    ),
    "weight_decay_multiplier_nan": (
        lambda t: MomentumHP(
            0.1, weight_decay=0.1, weight_decay_multipliers=[(".*/kernel", NAN)]
        ),
        ValueError,
        r"`weight_decay_multipliers` multipliers must be finite numbers >= 0, got "
        r"nan for pattern '\.\*/kernel'\.",
    ),
    "nesterov_string": (
        lambda t: MomentumHP(0.1, nesterov="yes"),
        TypeError,
        r"`nesterov` must be True or False, got 'yes'\.",
    ),
    "gradient_accumulation_steps_one": (
        lambda t: Adafactor(1e-3, gradient_accumulation_steps=1),
        ValueError,
        r"`gradient_accumulation_steps` must be an integer >= 2, got 1\.",
    ),
    "ema_momentum_one": (
        lambda t: MomentumHP(0.1, use_ema=True, ema_momentum=1.0),
        ValueError,
        r"`ema_momentum` must be a finite number >= 0 and < 1, got 1\.0\.",
    ),
    "bv_config_total_steps": (
        lambda t: from_big_vision_config(ADAFACTOR_CONFIG, total_steps=0),
        ValueError,
        r"`total_steps` must be an integer >= 1, got 0\.",
    ),
    "bv_config_negative_lr": (
        lambda t: from_big_vision_config(
            {**ADAFACTOR_CONFIG, "lr": -1e-3}, total_steps=10
        ),
        ValueError,
        r"`lr` must be a finite number >= 0, got -0\.001\.",
    ),
    "bv_config_negative_wd": (
        lambda t: from_big_vision_config(
            {**ADAFACTOR_CONFIG, "wd": -1e-4}, total_steps=10
        ),
        ValueError,
        r"`wd` must be a finite number >= 0, got -0\.0001\.",
    ),
    "bv_config_negative_clip": (
        lambda t: from_big_vision_config(
            {**ADAFACTOR_CONFIG, "grad_clip_norm": -1.0}, total_steps=10
        ),
        ValueError,
        r"`grad_clip_norm` must be a finite number >= 0, got -1\.0\.",
    ),
    "bv_config_optax_name_typo": (
        lambda t: from_big_vision_config(
            {**ADAFACTOR_CONFIG, "optax_name": "big_vision.scale_by_adafacter"},
            total_steps=10,
        ),
        ValueError,
        r"`optax_name` must be one of .*, got 'big_vision.scale_by_adafacter' "
        r"\(did you mean 'big_vision.scale_by_adafactor'\?\)\.",
    ),
    "bv_config_not_a_mapping": (
        lambda t: from_big_vision_config("adafactor", total_steps=10),
        TypeError,
        r"`config` must be a dict or ConfigDict, got str\.",
    ),
    # --- schedules -------------------------------------------------------------------
    "schedule_total_steps_zero": (
        lambda t: create_learning_rate_schedule(0, decay_type="cosine"),
        ValueError,
        r"`total_steps` must be an integer >= 1, got 0\.",
    ),
    "schedule_class_total_steps_zero": (
        lambda t: BigVisionSchedule(0),
        ValueError,
        r"`total_steps` must be an integer >= 1, got 0\.",
    ),
    "schedule_total_steps_string": (
        lambda t: create_learning_rate_schedule("100"),
        TypeError,
        r"`total_steps` must be an integer >= 1, got '100'\.",
    ),
    "schedule_cooldown_longer_than_run": (
        lambda t: create_learning_rate_schedule(
            100, decay_type="rsqrt", cooldown_steps=200
        ),
        ValueError,
        r"`cooldown_steps` must be <= `total_steps` .*, got cooldown_steps=200 "
        r"with total_steps=100\.",
    ),
    "schedule_warmup_longer_than_run": (
        lambda t: BigVisionSchedule(100, decay_type="cosine", warmup_steps=150),
        ValueError,
        r"`warmup_steps` must be < `total_steps` .*, got warmup_steps=150 with "
        r"total_steps=100\.",
    ),
    "schedule_negative_warmup": (
        lambda t: create_learning_rate_schedule(100, warmup_steps=-5),
        ValueError,
        r"`warmup_steps` must be a finite number >= 0, got -5\.0\.",
    ),
    "schedule_decay_type_typo": (
        lambda t: create_learning_rate_schedule(100, decay_type="cosin"),
        ValueError,
        r"`decay_type` must be one of .*, got 'cosin' \(did you mean 'cosine'\?\)",
    ),
    "schedule_base_nan": (
        lambda t: create_learning_rate_schedule(100, base=NAN),
        ValueError,
        r"`base` must be a finite number, got nan\.",
    ),
    "schedule_base_negative": (
        lambda t: BigVisionSchedule(100, base=-0.1),
        ValueError,
        r"`base` must be a finite number >= 0, got -0\.1\.",
    ),
    "schedule_timescale_zero": (
        lambda t: create_learning_rate_schedule(100, decay_type="rsqrt", timescale=0),
        ValueError,
        r"`timescale` must be > 0, got 0\.",
    ),
    "schedule_shift_too_negative": (
        lambda t: BigVisionSchedule(100, decay_type="rsqrt", timescale=10, shift=-10),
        ValueError,
        r"`shift` must be > -timescale \(-10\).*got shift=-10\.",
    ),
    "schedule_negative_power": (
        lambda t: create_learning_rate_schedule(100, decay_type="polynomial", power=-1),
        ValueError,
        r"`power` must be >= 0 .*, got -1\.",
    ),
    "schedule_batch_size_zero": (
        lambda t: create_learning_rate_schedule(100, warmup_examples=64, batch_size=0),
        ValueError,
        r"`batch_size` must be an integer >= 1, got 0\.",
    ),
    "schedule_negative_stair_step": (
        lambda t: BigVisionSchedule(100, steps=[-1], mults=[0.1]),
        ValueError,
        r"`steps\[0\]` must be an integer >= 0, got -1\.",
    ),
    "schedule_nan_stair_mult": (
        lambda t: BigVisionSchedule(100, steps=[10], mults=[NAN]),
        ValueError,
        r"`mults\[0\]` must be a finite number, got nan\.",
    ),
    "schedule_scale_with_batchsize": (
        lambda t: create_learning_rate_schedule(
            100, batch_size=64, scale_with_batchsize="yes"
        ),
        TypeError,
        r"`scale_with_batchsize` must be True or False, got 'yes'\.",
    ),
    "schedule_keyword_typo": (
        lambda t: create_learning_rate_schedule(100, cooldown_step=10),
        TypeError,
        r"create_learning_rate_schedule got an unexpected keyword argument "
        r"'cooldown_step' \(did you mean 'cooldown_steps'",
    ),
    # --- losses ----------------------------------------------------------------------
    "softmax_integer_labels": (
        lambda t: _loss(losses.SoftmaxXent(), [0, 1], np.zeros((2, 2))),
        ValueError,
        r"`y_true` must have shape \(2, 2\) \(one-hot, multi-hot or soft labels of "
        r"the logits' shape \(2, 2\); integer class ids must be one-hot encoded "
        r"first.*\), got shape \(2,\)\.",
    ),
    "sigmoid_column_labels": (
        lambda t: _loss(losses.SigmoidXent(), np.zeros((4, 1)), np.zeros((4, 10))),
        ValueError,
        r"`y_true` must have shape \(4, 10\) .*, got shape \(4, 1\)\.",
    ),
    "sigmoid_function_labels": (
        lambda t: losses.sigmoid_xent(np.zeros((3,)), np.zeros((3, 5))),
        ValueError,
        r"`y_true` must have shape \(3, 5\) .*, got shape \(3,\)\.",
    ),
    "softmax_class_count": (
        lambda t: losses.softmax_xent(np.zeros((4, 10)), np.zeros((4, 5))),
        ValueError,
        r"`y_true` must have shape \(4, 5\) .*, got shape \(4, 10\)\.",
    ),
    "softmax_scalar_logits": (
        lambda t: losses.softmax_xent(np.float32(1.0), np.float32(0.0)),
        ValueError,
        r"`y_pred` must be logits of shape \(\.\.\., num_classes\), got a scalar\.",
    ),
    "loss_name_typo": (
        lambda t: losses.get("sigmoid_xnet"),
        ValueError,
        r"`loss` must be 'sigmoid_xent', 'softmax_xent', .*, got 'sigmoid_xnet' "
        r"\(did you mean 'sigmoid_xent'\?\)\.",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path):
    call, error, match = CASES[case]
    with pytest.raises(error, match=match):
        call(tmp_path)


def test_case_count():
    """The issue asks for a suite of at least 55 cases in these modules."""
    assert len(CASES) >= 55


# --- unused multiplier rules: a warning at build, naming the rule ----------------


def _dense_variables(body=False):
    layers = [keras.layers.Dense(4, name="body")] if body else []
    layers.append(keras.layers.Dense(2, name="head"))
    return keras.Sequential([keras.Input((4,)), *layers]).trainable_variables


def test_weight_decay_rule_matching_nothing_warns_at_build():
    optimizer = Adafactor(
        1e-3,
        weight_decay=0.03,
        weight_decay_multipliers=[(".*haed/kernel", 100.0), (".*/kernel", 1.0)],
    )
    with pytest.warns(
        UserWarning,
        match=r"`weight_decay_multipliers` rule \('\.\*haed/kernel', 100\.0\) "
        r"applies to no variable: it full-matches none of the 2 variable paths",
    ):
        optimizer.build(_dense_variables())


def test_shadowed_rule_warns_at_build():
    optimizer = MomentumHP(
        0.1, learning_rate_multipliers=[(".*", 1.0), (".*head/kernel", 10.0)]
    )
    with pytest.warns(
        UserWarning,
        match=r"`learning_rate_multipliers` rule \('\.\*head/kernel', 10\.0\) "
        r"applies to no variable: every variable it matches is taken by an earlier",
    ):
        optimizer.build(_dense_variables())


def test_schedule_entry_matching_nothing_warns_at_build():
    optimizer = MomentumHP(
        0.1,
        schedule=[("embedding/.*", None), (".*", {"decay_type": "cosine"})],
        schedule_kwargs={"total_steps": 10},
    )
    with pytest.warns(UserWarning, match=r"`schedule` rule \('embedding/\.\*', None\)"):
        optimizer.build(_dense_variables())


def test_rules_that_match_do_not_warn():
    optimizer = Adafactor(
        1e-3,
        weight_decay=0.03,
        weight_decay_multipliers=[(".*head/kernel", 100.0), (".*/kernel", 1.0)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        optimizer.build(_dense_variables(body=True))
    # Without weight decay the multipliers are irrelevant: no warning either.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        MomentumHP(0.1, weight_decay_multipliers=[("nothing", 2.0)]).build(
            _dense_variables()
        )


# --- values that are allowed: the documented behaviour ---------------------------


def test_learning_rate_zero_and_schedule_objects_are_allowed():
    assert float(MomentumHP(0.0).learning_rate) == 0.0
    schedule = create_learning_rate_schedule(10, base=0.1, decay_type="cosine")
    optimizer = Adafactor(schedule)
    assert optimizer._learning_rate is schedule


def test_momentum_none_or_zero_is_plain_update():
    for momentum in (None, 0.0):
        optimizer = MomentumHP(0.1, momentum=momentum)
        optimizer.build(_dense_variables())
        assert all(m is None for m in optimizer._momentums)


def test_integral_float_sizes_are_accepted_as_ints():
    # 16.0 (e.g. from a config computed in floats) is 16; 16.5 raises (above).
    backbone = ViTBackbone(**{**TINY, "image_size": 16.0})
    assert backbone.image_size == (16, 16)
    assert isinstance(backbone.image_size[0], int)


def test_grad_clip_norm_zero_means_no_clipping():
    # big_vision's convention: grad_clip_norm 0 / None disables clipping.
    optimizer = from_big_vision_config(
        {**ADAFACTOR_CONFIG, "grad_clip_norm": 0.0}, total_steps=10
    )
    assert optimizer.global_clipnorm is None


def test_overlapping_warmup_and_cooldown_multiply_as_in_big_vision():
    # Allowed (big_vision multiplies both ramps); the peak is then never reached.
    schedule = create_learning_rate_schedule(
        10, base=1.0, decay_type="stair", warmup_steps=6, cooldown_steps=6
    )
    value = float(keras.ops.convert_to_numpy(schedule(5)))
    np.testing.assert_allclose(value, (5 / 6) * (5 / 6), rtol=1e-6)


def test_cooldown_of_the_whole_run_is_allowed():
    schedule = BigVisionSchedule(10, cooldown_steps=10)
    value = float(keras.ops.convert_to_numpy(schedule(0)))
    assert value == 1.0


def test_losses_accept_multi_hot_integer_labels_of_the_logits_shape():
    labels = np.array([[1, 0, 1]], "int32")
    logits = np.zeros((1, 3), "float32")
    loss = float(keras.ops.convert_to_numpy(losses.sigmoid_xent(labels, logits)[0]))
    np.testing.assert_allclose(loss, 3 * np.log(2), rtol=1e-6)


def _compiled_dense():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=losses.SoftmaxXent())
    return model


def test_loss_shape_check_inside_compiled_fit():
    """The check reads static shapes only: it works inside a compiled train step
    (unknown batch size on TensorFlow) and refuses integer labels there too.

    Known limit: a TensorFlow step retraced with relaxed shapes can see labels
    of unknown rank; nothing static is left to check and the check passes.
    """
    x = np.ones((4, 4), "float32")
    history = _compiled_dense().fit(
        x, np.eye(3, dtype="float32")[[0, 1, 2, 0]], verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(
        ValueError,
        match=r"`y_true` must have shape \((4|\?), 3\).*got shape \((4|None),\)",
    ):
        _compiled_dense().fit(x, np.array([0, 1, 2, 0], "float32"), verbose=0)
