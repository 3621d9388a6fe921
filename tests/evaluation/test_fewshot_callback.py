"""FewShotEvaluator in `model.fit` on every backend.

The callback's numbers are checked against ``fewshot_evaluate`` on features
computed independently with ``keras.Model.predict``, and training with the
callback must give the same weights as training without it.
"""

import csv

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_scalevit.evaluation import (
    FewShotEvaluator,
    fewshot_accuracy,
    fewshot_evaluate,
    sample_shots,
)

SHOTS = (1, 5)
NUM_SEEDS = 2
BATCH = 64


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = (data.images[..., None] / 8.0 - 1.0).astype("float32")  # [-1, 1]
    labels = data.target.astype("int64")
    return {
        "fit": (images[:400], labels[:400]),
        "train": (images[:1000], labels[:1000]),
        "test": (images[1000:1400], labels[1000:1400]),
    }


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    feats = keras.layers.Dense(24, activation="tanh", name="pre_logits")(x)
    logits = keras.layers.Dense(10, name="head")(feats)
    model = keras.Model(inputs, logits)
    model.representation_model = keras.Model(inputs, feats)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _independent(rep_model, digits):
    """Few-shot numbers from features computed with plain `predict`."""
    x_tr = rep_model.predict(digits["train"][0], batch_size=BATCH, verbose=0)
    x_te = rep_model.predict(digits["test"][0], batch_size=BATCH, verbose=0)
    out = fewshot_evaluate(
        x_tr,
        digits["train"][1],
        x_te,
        digits["test"][1],
        num_classes=10,
        name="digits",
        shots=SHOTS,
        seeds=tuple(range(NUM_SEEDS)),
    )
    return {"fewshot/" + k: v for k, v in out.items()}, (x_tr, x_te)


def _evaluator(digits, **kwargs):
    defaults = dict(
        shots=SHOTS, num_seeds=NUM_SEEDS, batch_size=BATCH, keep_features=True
    )
    defaults.update(kwargs)
    return FewShotEvaluator(
        {"digits": (digits["train"], digits["test"], 10)}, **defaults
    )


def test_logs_reach_history_and_csv(digits, tmp_path):
    model = _model()
    evaluator = _evaluator(digits, every_n_steps=4, log_per_seed=True)
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        *digits["fit"],
        batch_size=50,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[evaluator, keras.callbacks.CSVLogger(str(csv_path))],
    )
    # 8 steps per epoch: evaluations at steps 4, 8, 12, 16; the end of
    # training (step 16) is not evaluated twice.
    assert [h["step"] for h in evaluator.history] == [4, 8, 12, 16]
    keys = [
        "fewshot/digits_1shot",
        "fewshot/digits_5shot",
        "fewshot/digits_5shot-seed-1",
    ]
    for key in keys:
        # Each epoch's logs carry the last evaluation of that epoch.
        assert history.history[key] == [
            evaluator.history[1]["results"][key],
            evaluator.history[3]["results"][key],
        ]
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert float(rows[1]["fewshot/digits_5shot"]) == pytest.approx(
        history.history["fewshot/digits_5shot"][1], rel=1e-12
    )


def test_numbers_equal_function_on_same_features(digits):
    model = _model()
    evaluator = _evaluator(digits, every_n_epochs=1, log_per_seed=True)
    model.fit(*digits["fit"], batch_size=50, epochs=1, verbose=0, callbacks=[evaluator])
    final = evaluator.history[-1]["results"]

    # 1) The function on the very features the callback extracted.
    x_tr, y_tr, x_te, y_te = evaluator.features["digits"]
    np.testing.assert_array_equal(y_tr, digits["train"][1])
    for seed in range(NUM_SEEDS):
        for shots in SHOTS:
            idx = sample_shots(y_tr, shots, seed, num_classes=10)
            want = fewshot_accuracy(x_tr[idx], y_tr[idx], x_te, y_te, num_classes=10)
            assert final[f"fewshot/digits_{shots}shot-seed-{seed}"] == want

    # 2) Features from an independent `predict` of the trained model.
    expected, (ref_tr, ref_te) = _independent(model.representation_model, digits)
    np.testing.assert_allclose(x_tr, ref_tr, rtol=0, atol=1e-6)
    np.testing.assert_allclose(x_te, ref_te, rtol=0, atol=1e-6)
    assert final == expected


def test_callback_does_not_change_training(digits):
    weights = []
    for callbacks in ([], [_evaluator(digits, every_n_steps=3)]):
        model = _model(seed=1)
        model.fit(
            *digits["fit"],
            batch_size=50,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        weights.append([np.asarray(w) for w in model.get_weights()])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_stopped_training_is_evaluated_at_train_end(digits):
    class StopAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.stop_training = True

    model = _model()
    evaluator = _evaluator(digits, every_n_steps=100)
    model.fit(
        *digits["fit"],
        batch_size=50,
        epochs=3,
        verbose=0,
        callbacks=[evaluator, StopAt()],
    )
    assert [h["step"] for h in evaluator.history] == [3]
    expected, _ = _independent(model.representation_model, digits)
    assert evaluator.history[0]["results"] == expected


def test_tf_data_input_equals_numpy(digits):
    import tensorflow as tf

    model = _model()

    def as_dataset(images, labels):
        # Unbatched dict elements, as TFDS gives them.
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    from_numpy = _evaluator(digits).evaluate(model)
    from_tf = FewShotEvaluator(
        {
            "digits": {
                "train": as_dataset(*digits["train"]),
                "test": lambda: as_dataset(*digits["test"]).batch(17),
            }
        },
        shots=SHOTS,
        num_seeds=NUM_SEEDS,
        batch_size=BATCH,
    ).evaluate(model)
    assert from_tf == from_numpy
    # A Keras model given as representation_fn, no model attached.
    standalone = _evaluator(digits, representation_fn=model.representation_model)
    assert standalone.evaluate() == from_numpy


def test_from_config_with_mock_tfds():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    calls = []

    def pp_builder(pp):
        assert pp == "decode|resize(8)"

        def fn(features):
            image = tf.io.decode_image(
                features["image"], channels=3, expand_animations=False
            )
            image = tf.image.resize(tf.cast(image, tf.float32), (8, 8)) / 127.5 - 1.0
            return {"image": image, "label": features["label"]}

        return fn

    from keras_scalevit.evaluation import tfds_split_loader

    default_loader = tfds_split_loader(pp_builder=pp_builder)

    def load_split(name, split, pp):
        calls.append((name, split))
        return default_loader(name, split, pp)

    config = {
        "type": "fewshot_lsr",
        "representation_layer": "pre_logits",
        "datasets": {"cifar": ("cifar10", "train[:50]", "test", 10)},
        "pp_train": "decode|resize(8)",
        "pp_eval": "decode|resize(8)",
        "shots": (1, 2),
        "l2_reg": 256.0,
        "num_seeds": 1,
        "log_steps": 5,
        "batch_size": 16,
    }
    evaluator = FewShotEvaluator.from_config(
        config, load_split=load_split, representation_fn=lambda x: x.reshape(len(x), -1)
    )
    assert calls == []  # nothing is loaded before the first evaluation
    assert evaluator.every_n_steps == 5 and evaluator.l2_reg == 256.0
    with tfds.testing.mock_data(num_examples=60):
        results = evaluator.evaluate()
        train = tfds.load("cifar10", split="train[:50]")
        test = tfds.load("cifar10", split="test")
        tr = [(ex["image"], ex["label"]) for ex in tfds.as_numpy(train)]
        te = [(ex["image"], ex["label"]) for ex in tfds.as_numpy(test)]
    assert sorted(calls) == [("cifar10", "test"), ("cifar10", "train[:50]")]

    def feats(pairs):
        images = tf.image.resize(
            np.stack([p[0] for p in pairs]).astype("float32"), (8, 8)
        )
        return (images.numpy() / 127.5 - 1.0).reshape(len(pairs), -1), np.array(
            [p[1] for p in pairs]
        )

    (x_tr, y_tr), (x_te, y_te) = feats(tr), feats(te)
    for shots in (1, 2):
        idx = sample_shots(y_tr, shots, 0, num_classes=10)
        want = fewshot_accuracy(
            x_tr[idx], y_tr[idx], x_te, y_te, num_classes=10, l2_reg=256.0
        )
        assert results[f"fewshot/cifar_{shots}shot"] == want


def test_vit_mu8_representation(digits):
    from keras_scalevit.models import ViTClassifier

    def rgb16(images):
        return np.repeat(np.repeat(np.repeat(images, 2, 1), 2, 2), 3, 3)

    data = {k: (rgb16(v[0]), v[1]) for k, v in digits.items()}
    keras.utils.set_random_seed(0)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=10, image_size=16, pool_type="map", head_zeroinit=False
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    evaluator = _evaluator(data)
    model.fit(*data["fit"], batch_size=100, epochs=1, verbose=0, callbacks=[evaluator])
    expected, _ = _independent(model.representation_model, data)
    assert evaluator.history[-1]["results"] == expected
    # num_classes=0: the model itself is the representation.
    backbone_only = ViTClassifier.from_variant(
        "mu/8", num_classes=0, image_size=16, pool_type="map"
    )
    results = _evaluator(data, log_per_seed=True).evaluate(backbone_only)
    expected, _ = _independent(backbone_only, data)
    assert results == expected


# ------------------------------------------------------------- bad input


def test_error_unknown_config_key():
    with pytest.raises(TypeError, match=r"'shot' \(did you mean 'shots'\?\)"):
        FewShotEvaluator.from_config({"datasets": {"a": ("a", "t", "v")}, "shot": 5})


def test_error_bad_dataset_spec():
    with pytest.raises(ValueError, match=r"datasets\['a'\]"):
        FewShotEvaluator({"a": (1, 2, 3, 4)})
    with pytest.raises(ValueError, match=r"config `datasets\['a'\]`"):
        FewShotEvaluator.from_config({"datasets": {"a": ("a", "train")}})


def test_error_images_labels_count_mismatch(digits):
    x, y = digits["train"]
    evaluator = FewShotEvaluator({"d": ((x, y[:-1]), digits["test"])}, shots=(1,))
    with pytest.raises(
        ValueError, match=r"datasets\['d'\]\['train'\].*1000 images.*999"
    ):
        evaluator.evaluate(_model())


def test_error_labels_outside_num_classes(digits):
    evaluator = FewShotEvaluator(
        {"d": (digits["train"], digits["test"], 5)}, shots=(1,)
    )
    with pytest.raises(ValueError, match=r"train_labels.*\[0, 5\)"):
        evaluator.evaluate(_model())


def test_error_one_hot_labels(digits):
    x, y = digits["train"]
    evaluator = FewShotEvaluator({"d": ((x, np.eye(10)[y]), digits["test"])})
    with pytest.raises(ValueError, match=r"\['train'\]: labels must be integer"):
        evaluator.evaluate(_model())


def test_error_model_without_representation():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.num_classes = 3
    evaluator = FewShotEvaluator({"d": ((np.zeros((4, 4)), np.arange(4) % 2),) * 2})
    with pytest.raises(ValueError, match="num_classes=3 and no `representation_model`"):
        evaluator.evaluate(model)
