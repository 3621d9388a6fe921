"""The embedded digits data set: offline build, splits, pixels, determinism.

The reference is scikit-learn's own copy of the data (``load_digits``); the
grey-level mapping is checked against its definition (0..16 -> 0..255, round
half up) and the split against per-class counts computed here.
"""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from keras_scalevit.data import DIGITS_NAME, ScalevitDigits, get_builder, make_dataset
from keras_scalevit.data.digits import digits_split_indices


def _no_network(*args, **kwargs):
    raise AssertionError("the digits build tried to open a network connection")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def built(data_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        return get_builder(DIGITS_NAME, data_dir=data_dir)


def _examples(builder, split):
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return [(ex["image"].numpy(), int(ex["label"])) for ex in ds]


def test_builds_offline_with_expected_features(built):
    assert isinstance(built, ScalevitDigits) and built.name == "scalevit_digits"
    features = built.info.features
    assert (
        features["image"].shape == (8, 8, 3) and features["image"].np_dtype == np.uint8
    )
    assert features["label"].num_classes == 10
    assert {s: built.info.splits[s].num_examples for s in ("train", "test")} == {
        "train": 1438,
        "test": 359,
    }


def test_split_is_stratified_and_disjoint():
    labels = load_digits().target
    idx = digits_split_indices()
    assert len(np.intersect1d(idx["train"], idx["test"])) == 0
    assert len(idx["train"]) + len(idx["test"]) == len(labels) == 1797
    for c in range(10):
        n_c = int(np.sum(labels == c))
        assert int(np.sum(labels[idx["test"]] == c)) == int(np.floor(0.2 * n_c + 0.5))


@pytest.mark.parametrize("split", ["train", "test"])
def test_pixels_and_labels_match_sklearn(built, split):
    digits = load_digits()
    rows = digits_split_indices()[split]
    grey = np.floor(digits.images[rows] * 255 / 16 + 0.5).astype(np.uint8)
    expected = sorted(
        np.repeat(g[..., None], 3, -1).tobytes() + bytes([y])
        for g, y in zip(grey, digits.target[rows], strict=True)
    )
    examples = _examples(built, split)
    assert all(0 <= y <= 9 for _, y in examples)
    assert all(img.dtype == np.uint8 and img.shape == (8, 8, 3) for img, _ in examples)
    assert sorted(img.tobytes() + bytes([y]) for img, y in examples) == expected


def test_build_is_deterministic(built, tmp_path):
    other = get_builder(DIGITS_NAME, data_dir=str(tmp_path))
    for split in ("train", "test"):
        a, b = _examples(built, split), _examples(other, split)
        assert all(
            np.array_equal(x[0], y[0]) and x[1] == y[1]
            for x, y in zip(a, b, strict=True)
        )


def test_make_dataset_offline(built, data_dir):
    pp = "decode|resize(32)|value_range(-1, 1)|onehot(10, key='label', key_result='labels')"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        ds = make_dataset(DIGITS_NAME, "train", pp, 16, data_dir=data_dir)
        images, labels = next(iter(ds))
    assert images.shape == (16, 32, 32, 3) and labels.shape == (16, 10)
    assert -1.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0
    assert tfds.builder(DIGITS_NAME, data_dir=data_dir).is_prepared()
