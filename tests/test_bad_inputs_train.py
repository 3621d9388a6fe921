"""Bad configs for the training entry point: a clear error naming the field, early.

Every case goes through `keras_scalevit.train.main` and must fail before any work:
no data is built and the workdir is not even created. The message names the
config field (``config.<path>``).
"""

import math

import ml_collections
import pytest

from keras_scalevit import train
from keras_scalevit.configs import digits


def _config(**changes):
    """The digits config with ``a__b=value`` set at ``config.a.b``.

    Built from a plain dict so that ConfigDict's own type checks on assignment
    do not intercept the value before the entry point sees it (the command line
    and a config file can produce any of these).
    """
    config = digits.get_config().to_dict()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return ml_collections.ConfigDict(config)


# (id, changes, exception type, text the message must contain)
CASES = [
    ("total_steps_zero", {"total_steps": 0}, ValueError, "`config.total_steps`"),
    ("total_steps_negative", {"total_steps": -5}, ValueError, "`config.total_steps`"),
    ("total_steps_str", {"total_steps": "100"}, TypeError, "`config.total_steps`"),
    (
        "no_total_steps_nor_epochs",
        {"total_steps": None},
        ValueError,
        "`config.total_steps` or `total_epochs`",
    ),
    (
        "total_epochs_negative",
        {"total_steps": None, "total_epochs": -1.0},
        ValueError,
        "`config.total_epochs`",
    ),
    (
        "total_epochs_nan",
        {"total_steps": None, "total_epochs": math.nan},
        ValueError,
        "`config.total_epochs`",
    ),
    (
        "batch_size_zero",
        {"input__batch_size": 0},
        ValueError,
        "`config.input.batch_size`",
    ),
    (
        "shuffle_buffer_zero",
        {"input__shuffle_buffer_size": 0},
        ValueError,
        "`config.input.shuffle_buffer_size`",
    ),
    ("cache_int", {"input__cache": 3}, TypeError, "`config.input.cache`"),
    ("pp_empty", {"input__pp": ""}, TypeError, "`config.input.pp`"),
    (
        "data_name_missing",
        {"input__data__name": None},
        ValueError,
        "config.input.data.name",
    ),
    ("split_int", {"input__data__split": 0}, TypeError, "`config.input.data.split`"),
    (
        "log_steps_negative",
        {"log_training_steps": -1},
        ValueError,
        "`config.log_training_steps`",
    ),
    ("ckpt_steps_negative", {"ckpt_steps": -10}, ValueError, "`config.ckpt_steps`"),
    ("ckpt_steps_float", {"ckpt_steps": 2.5}, TypeError, "`config.ckpt_steps`"),
    ("verbose_3", {"verbose": 3}, ValueError, "`config.verbose`"),
    ("seed_float", {"seed": 1.5}, TypeError, "`config.seed`"),
    ("jit_compile_str", {"jit_compile": "yes"}, TypeError, "`config.jit_compile`"),
    ("model_name", {"model_name": "resnet"}, ValueError, "`config.model_name`"),
    ("num_classes_zero", {"num_classes": 0}, ValueError, "`config.num_classes`"),
    ("image_size_zero", {"image_size": 0}, ValueError, "`config.image_size`"),
    ("image_size_triple", {"image_size": (8, 8, 8)}, ValueError, "`config.image_size`"),
    (
        "head_bias_nan",
        {"init_head_bias": math.nan},
        ValueError,
        "`config.init_head_bias`",
    ),
    ("loss_unknown", {"loss": "sigmoid_xnet"}, ValueError, "`config.loss`"),
    ("loss_number", {"loss": 3}, TypeError, "`config.loss`"),
    ("lr_negative", {"lr": -1e-3}, ValueError, "`config.lr`"),
    ("lr_nan", {"lr": math.nan}, ValueError, "`config.lr`"),
    ("wd_negative", {"wd": -0.1}, ValueError, "`config.wd`"),
    ("clip_negative", {"grad_clip_norm": -1.0}, ValueError, "`config.grad_clip_norm`"),
    ("ema_above_one", {"ema_momentum": 1.5}, ValueError, "`config.ema_momentum`"),
    ("mixup_negative", {"mixup__p": -0.2}, ValueError, "`config.mixup.p`"),
    (
        "val_type",
        {"evals__val__type": "retrieval"},
        ValueError,
        "`config.evals.val.type`",
    ),
    ("val_no_pp", {"evals__val__pp_fn": None}, ValueError, "`pp_fn`"),
    (
        "val_log_steps_negative",
        {"evals__val__log_steps": -300},
        ValueError,
        "`config.evals.val.log_steps`",
    ),
    ("unknown_field", {"totl_steps": 10}, TypeError, "'totl_steps'"),
    ("unknown_input_field", {"input__batchsize": 8}, TypeError, "`config.input`"),
]


@pytest.mark.parametrize(
    "changes, error, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_config_is_refused_before_any_work(tmp_path, changes, error, text):
    workdir = tmp_path / "workdir"
    with pytest.raises(error) as info:
        train.main(_config(**changes), str(workdir))
    assert text in str(info.value), str(info.value)
    assert not workdir.exists()  # refused before anything was created


def test_unknown_field_suggests_the_close_match(tmp_path):
    with pytest.raises(TypeError, match=r"did you mean 'total_steps'"):
        train.main(_config(totl_steps=10), str(tmp_path / "w"))


def test_total_steps_zero_is_not_reported_as_missing(tmp_path):
    with pytest.raises(ValueError) as info:
        train.main(_config(total_steps=0), str(tmp_path / "w"))
    assert "needs" not in str(info.value)
    assert "got 0" in str(info.value)


@pytest.mark.parametrize("workdir", [None, 3, ""], ids=["none", "int", "empty"])
def test_bad_workdir(workdir):
    with pytest.raises(TypeError, match="`workdir`"):
        train.main(digits.get_config(), workdir)


@pytest.mark.parametrize("config", [None, "digits.py", 3], ids=["none", "str", "int"])
def test_config_of_the_wrong_kind(config, tmp_path):
    with pytest.raises(TypeError, match="`config`"):
        train.main(config, str(tmp_path / "w"))


def test_a_plain_dict_config_is_checked_too(tmp_path):
    config = digits.get_config().to_dict()
    config["total_steps"] = 0
    with pytest.raises(ValueError, match="`config.total_steps`"):
        train.main(ml_collections.ConfigDict(config), str(tmp_path / "w"))
