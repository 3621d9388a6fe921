"""Bad inputs to few-shot evaluation: clear errors, before any solve.

Each case asserts the exception type and that the message names the argument
(and the value or what is allowed). Allowed edge values have a test that
documents their behaviour.
"""

import keras
import numpy as np
import pytest

from keras_scalevit.evaluation import (
    FewShotEvaluator,
    fewshot_accuracy,
    fewshot_evaluate,
    fewshot_predictions,
    sample_shots,
    select_l2_reg,
    tfds_split_loader,
)


def _toy(n_per_class=4, classes=3, width=4):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), n_per_class)
    return rng.normal(size=(labels.size, width)), labels


def _with_nan(x, row=5):
    x = x.copy()
    x[row, 1] = np.nan
    return x


X, Y = _toy()

# (keyword overrides of a valid fewshot_accuracy call, exception, regex)
ACCURACY_CASES = [
    (dict(num_classes=0), ValueError, r"`num_classes` must be an integer >= 1, got 0"),
    (dict(num_classes=2.5), TypeError, r"`num_classes` must be an integer"),
    (dict(l2_reg=0.0), ValueError, r"`l2_reg` must be a finite number > 0, got 0.0"),
    (dict(l2_reg=-1), ValueError, r"`l2_reg` must be a finite number > 0"),
    (dict(l2_reg=float("nan")), ValueError, r"`l2_reg` must be a finite number"),
    (dict(l2_reg=float("inf")), ValueError, r"`l2_reg` must be a finite number"),
    (dict(l2_reg="1024"), TypeError, r"`l2_reg` must be a finite number"),
    (dict(train_features=X[:, 0]), ValueError, r"`train_features` must be a 2-D"),
    (dict(train_features=X[None]), ValueError, r"`train_features` must be a 2-D"),
    (dict(train_features=X[:, :0]), ValueError, r"`train_features` must have at"),
    (
        dict(train_features=_with_nan(X)),
        ValueError,
        r"`train_features` must be finite.*1 row.*\[5\]",
    ),
    (
        dict(test_features=np.where(X > 1, np.inf, X)),
        ValueError,
        r"`test_features` must be finite",
    ),
    (
        dict(train_features=X.astype(str)),
        TypeError,
        r"`train_features` must hold real numbers",
    ),
    (
        dict(test_features=X[:, :3]),
        ValueError,
        r"`test_features` has 3 features.*`train_features` has 4",
    ),
    (
        dict(train_labels=Y.astype(float)),
        TypeError,
        r"`train_labels` must hold integer class ids, got dtype float64",
    ),
    (
        dict(train_labels=np.eye(3, dtype=int)[Y]),
        ValueError,
        r"`train_labels` must be a 1-D array.*not one-hot",
    ),
    (
        dict(train_labels=np.where(Y == 2, 3, Y)),
        ValueError,
        r"`train_labels` must lie in \[0, num_classes\) = \[0, 3\).*\[3\]",
    ),
    (
        dict(test_labels=np.full(12, -1)),
        ValueError,
        r"`test_labels` must lie in \[0, num_classes\).*\[-1\]",
    ),
    (
        dict(train_labels=Y[:-1]),
        ValueError,
        r"`train_features` has 12 rows but `train_labels` has 11",
    ),
    (
        dict(test_labels=Y[:10]),
        ValueError,
        r"`test_features` has 12 rows but `test_labels` has 10",
    ),
    (
        dict(num_classes=4),
        ValueError,
        r"`train_labels` has no examples of class\(es\) \[3\]",
    ),
]


@pytest.mark.parametrize(
    "kwargs, error, match",
    ACCURACY_CASES,
    ids=[f"{'-'.join(c[0])}-{i}" for i, c in enumerate(ACCURACY_CASES)],
)
def test_fewshot_accuracy_refuses_bad_inputs(kwargs, error, match):
    call = dict(
        train_features=X,
        train_labels=Y,
        test_features=X,
        test_labels=Y,
        num_classes=3,
    )
    call.update(kwargs)
    with pytest.raises(error, match=match):
        fewshot_accuracy(**call)


# (keyword overrides of a valid fewshot_evaluate call, exception, regex)
EVALUATE_CASES = [
    (dict(shots=0), ValueError, r"`shots\[0\]` must be an integer >= 1, got 0"),
    (dict(shots=()), ValueError, r"`shots` must be an integer or a non-empty"),
    (dict(shots=(1, 2.5)), TypeError, r"`shots\[1\]` must be an integer"),
    (dict(shots="5"), TypeError, r"`shots` must be an integer or a non-empty"),
    (dict(shots=(2, 2)), ValueError, r"`shots` must not repeat values.*\[2\]"),
    (dict(seeds=-1), ValueError, r"`seeds\[0\]` must be an integer >= 0, got -1"),
    (dict(seeds=1.5), TypeError, r"`seeds` must be an integer or a non-empty"),
    (dict(seeds=(0, 0)), ValueError, r"`seeds` must not repeat values"),
    (dict(name=""), ValueError, r"`name` must be a non-empty str"),
    (dict(name=3), TypeError, r"`name` must be a non-empty str"),
    (dict(per_seed="yes"), TypeError, r"`per_seed` must be True or False"),
    (dict(l2_sweep=[1.0, -1.0]), ValueError, r"`l2_sweep\[1\]` must be a finite"),
    (dict(l2_sweep="abc"), TypeError, r"`l2_sweep` must be a non-empty sequence"),
    (dict(l2_sweep=[]), ValueError, r"`l2_sweep` must be a non-empty sequence"),
]


@pytest.mark.parametrize(
    "kwargs, error, match",
    EVALUATE_CASES,
    ids=[f"{'-'.join(c[0])}-{i}" for i, c in enumerate(EVALUATE_CASES)],
)
def test_fewshot_evaluate_refuses_bad_arguments(kwargs, error, match):
    call = dict(num_classes=3, shots=(1, 2), seeds=(0,))
    call.update(kwargs)
    with pytest.raises(error, match=match):
        fewshot_evaluate(X, Y, X, Y, **call)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(shots=0), ValueError, r"`shots` must be an integer >= 1, got 0"),
        (dict(shots=True), TypeError, r"`shots` must be an integer"),
        (dict(seed=-3), ValueError, r"`seed` must be an integer >= 0, got -3"),
        (dict(seed="0"), TypeError, r"`seed` must be an integer"),
        (dict(num_classes=None), TypeError, r"`num_classes` must be an integer"),
    ],
)
def test_sample_shots_refuses_bad_arguments(kwargs, error, match):
    call = dict(labels=Y, shots=2, seed=0, num_classes=3)
    call.update(kwargs)
    with pytest.raises(error, match=match):
        sample_shots(**call)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(holdout_fraction=1.0), ValueError, r"`holdout_fraction` must be .*< 1"),
        (dict(holdout_fraction=0), ValueError, r"`holdout_fraction` must be .*> 0"),
        (dict(l2_grid=[]), ValueError, r"`l2_grid` must be a non-empty sequence"),
        (dict(l2_grid=5.0), TypeError, r"`l2_grid` must be a non-empty sequence"),
        (dict(l2_grid=[1, 0]), ValueError, r"`l2_grid\[1\]` must be a finite number"),
    ],
)
def test_select_l2_reg_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        select_l2_reg(X, Y, num_classes=3, **kwargs)


def test_predictions_check_before_solving():
    with pytest.raises(ValueError, match=r"`train_features` must be finite"):
        fewshot_predictions(_with_nan(X), Y, X, num_classes=3)


def test_int_features_and_more_shots_than_rows_are_allowed():
    # Integer features are real numbers; a class short of shots contributes
    # all it has, with a warning (big_vision's behaviour).
    acc = fewshot_accuracy(
        (X * 10).astype(np.int64), Y, (X * 10).astype(np.int64), Y, num_classes=3
    )
    assert 0.0 <= acc <= 1.0
    with pytest.warns(UserWarning, match="shots=5 but class 0 has 4"):
        out = fewshot_evaluate(X, Y, X, Y, num_classes=3, shots=5, seeds=0)
    assert set(out) == {"dataset_5shot", "dataset_5shot-seed-0"}


# ------------------------------------------------------------ the callback --


def _data():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(12, 4)).astype("float32")
    return (images, Y), (images, Y)


# (constructor keyword overrides, exception, regex)
CALLBACK_CASES = [
    (dict(datasets=[]), TypeError, r"`datasets` must be a non-empty dict"),
    (dict(datasets={}), ValueError, r"`datasets` must be a non-empty dict"),
    (dict(datasets={"d": (1, 2, 0)}), ValueError, r"`datasets\['d'\] num_classes`"),
    (dict(shots=0), ValueError, r"`shots\[0\]` must be an integer >= 1"),
    (dict(num_seeds=0), ValueError, r"`num_seeds` must be an integer >= 1, got 0"),
    (dict(l2_reg=0), ValueError, r"`l2_reg` must be a finite number > 0"),
    (dict(every_n_steps=0), ValueError, r"`every_n_steps` must be an integer >= 1"),
    (dict(every_n_epochs=1.5), TypeError, r"`every_n_epochs` must be an integer"),
    (dict(batch_size=0), ValueError, r"`batch_size` must be an integer >= 1"),
    (dict(at_train_end="no"), TypeError, r"`at_train_end` must be True or False"),
    (dict(at_train_end=False), ValueError, r"`at_train_end` must be True when"),
    (dict(log_per_seed=1), TypeError, r"`log_per_seed` must be True or False"),
    (dict(keep_features="y"), TypeError, r"`keep_features` must be True or False"),
    (dict(prefix=3), TypeError, r"`prefix` must be a str"),
    (dict(representation_fn=3), TypeError, r"`representation_fn` must be callable"),
    (dict(l2_sweep=[0.0]), ValueError, r"`l2_sweep\[0\]` must be a finite number"),
]


@pytest.mark.parametrize(
    "kwargs, error, match",
    CALLBACK_CASES,
    ids=[f"{'-'.join(c[0])}-{i}" for i, c in enumerate(CALLBACK_CASES)],
)
def test_evaluator_refuses_bad_arguments(kwargs, error, match):
    call = dict(datasets={"d": _data()})
    call.update(kwargs)
    with pytest.raises(error, match=match):
        FewShotEvaluator(**call)


@pytest.mark.parametrize(
    "config, error, match",
    [
        (dict(shot=5), TypeError, r"'shot' \(did you mean 'shots'\?\)"),
        (dict(type="knn"), ValueError, r"`config.type` must be one of 'fewshot_lsr'"),
        (
            dict(representation_layer="logits"),
            ValueError,
            r"`config.representation_layer` must be one of 'pre_logits'",
        ),
        (dict(datasets={}), ValueError, r"config needs `datasets`"),
        (dict(datasets=[("a", "train", "test")]), TypeError, r"`datasets` must be a"),
        (
            dict(datasets={"a": ("a", 1, "test")}),
            ValueError,
            r"config `datasets\['a'\]` must be \(tfds_name, train_split",
        ),
        (dict(log_steps=0), ValueError, r"`every_n_steps` must be an integer >= 1"),
        (
            dict(log_steps=10, every_n_steps=10),
            ValueError,
            r"one of config `log_steps` and `every_n_steps`",
        ),
    ],
)
def test_evaluator_from_config_refuses_bad_configs(config, error, match):
    full = {"datasets": {"a": ("a", "train", "test")}}
    full.update(config)
    with pytest.raises(error, match=match):
        FewShotEvaluator.from_config(full)


def test_evaluator_names_the_data_set_when_features_are_not_finite():
    def diverged(images):
        return np.full((len(images), 4), np.nan, np.float32)

    evaluator = FewShotEvaluator(
        {"toy": _data()}, shots=(1,), representation_fn=diverged
    )
    with pytest.raises(
        ValueError, match=r"data set 'toy'.*`train_features` must be finite"
    ):
        evaluator.evaluate()


def test_evaluator_runs_with_only_at_train_end():
    # Documented default: no periodic evaluation, one at the end of training.
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile("sgd", "mse")
    evaluator = FewShotEvaluator({"toy": _data()}, shots=(1,))
    x, y = _data()[0]
    model.fit(x, np.zeros((12, 2)), epochs=1, verbose=0, callbacks=[evaluator])
    assert len(evaluator.history) == 1


def test_loader_hooks_must_be_callable():
    with pytest.raises(TypeError, match=r"`pp_builder` must be callable"):
        tfds_split_loader(pp_builder="decode")
    with pytest.raises(TypeError, match=r"`data_dir` must be a path or None"):
        tfds_split_loader(data_dir=3)
    with pytest.raises(TypeError, match=r"`load_split` must be callable"):
        FewShotEvaluator.from_config(
            {"datasets": {"a": ("a", "train", "test")}}, load_split="tfds"
        )
