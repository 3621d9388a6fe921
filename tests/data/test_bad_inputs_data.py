"""Bad inputs to the data package: every one gets a clear, early error.

Each case asserts the exception type and that the message names the argument
or the op (and, where it helps, the value and what is allowed). Values that are
legitimately allowed have a test documenting what they do.

Three kinds of check, by when the problem can be known:
- pp-string arguments: when the pp string is built (``get_preprocess_fn``);
- a feature's dtype, rank, static size or (eager) value: when the op is traced
  or run eagerly, a ``ValueError`` naming the op;
- data known only inside ``tf.data`` (decoded image sizes, labels): a
  ``tf.errors.InvalidArgumentError`` naming the op when the example is produced.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_scalevit.data import (
    check_batch_size,
    get_num_examples,
    get_preprocess_fn,
    make_dataset,
    mixup,
    register_op,
    sample_mixup_weight,
)
from keras_scalevit.data.digits import digits_to_uint8

DIGITS_PP = "decode|value_range(-1, 1)|onehot(10, key='label', key_result='labels')"


def _image(h=8, w=8, c=3, dtype=np.uint8):
    return np.zeros((h, w, c), dtype)


# ------------------------------------------------- pp-string arguments --
# (pp string, exception, regex the message must match)
PP_BUILD_CASES = [
    # The parser and the op registry.
    ("decode|resise(8)", ValueError, r"Unknown pp op 'resise'.*did you mean 'resize'"),
    ("value_rang(-1, 1)", ValueError, r"did you mean 'value_range'"),
    ("resize(8, methd='area')", TypeError, r"pp op 'resize'.*'methd'.*'method'"),
    ("resize(8, 'area', False, 3)", TypeError, r"pp op 'resize'.*Signature: resize"),
    ("resize", TypeError, r"pp op 'resize'.*size"),
    ("flip_lr(0.5)", TypeError, r"pp op 'flip_lr'"),
    ("resize(-'a')", ValueError, r"must be Python literals"),
    ("resize(8", ValueError, r"cannot parse"),
    ("resize(8, key=1)", TypeError, r"`key` must be a feature name"),
    ("resize(8, inkey='')", ValueError, r"`inkey` must be a feature name"),
    # value_range
    ("value_range(-1, 1, 5, 5)", ValueError, r"`in_max` must differ from `in_min`"),
    (
        "value_range(-1, 1, [0, 0, 0], [255, 0, 255])",
        ValueError,
        r"`in_max` must differ.*\(channel 1\)",
    ),
    ("value_range(-1, 1, [0, 0], [1, 1, 1])", ValueError, r"one value per channel"),
    ("value_range(-1, 1, [], 1)", ValueError, r"`in_min` must be a number or a"),
    ("value_range(-1, 1, 0, 1e999)", ValueError, r"`in_max` must be a finite number"),
    ("value_range(-1, 1, in_min=0)", ValueError, r"`in_max` must be given together"),
    ("value_range(1, 1)", ValueError, r"`vmax` must differ from `vmin`"),
    ("value_range('a')", TypeError, r"`vmin` must be a finite number, got 'a'"),
    ("value_range(clip_values=1)", TypeError, r"`clip_values` must be True or False"),
    # onehot
    ("onehot(0)", ValueError, r"`depth` must be an integer >= 1, got 0"),
    ("onehot(10.5)", TypeError, r"`depth` must be an integer"),
    ("onehot(10, on=1, off=1)", ValueError, r"`on` must differ from `off`"),
    ("onehot(10, key=3)", TypeError, r"`key` must be a feature name"),
    ("onehot(10, multi='no')", TypeError, r"`multi` must be True or False"),
    # keep / drop / copy
    ("keep()", ValueError, r"pp op `keep` needs at least one feature name"),
    ("keep('image', 3)", TypeError, r"keep: argument 1"),
    ("drop()", ValueError, r"pp op `drop` needs at least one"),
    ("copy('image', None)", TypeError, r"`outkey` must be a feature name"),
    # sizes
    ("resize(0)", ValueError, r"`size` must be a positive int or a pair"),
    ("resize((8, 8, 8))", ValueError, r"`size` must be a positive int or a pair"),
    ("resize(8.5)", TypeError, r"`size` must be a positive int"),
    ("resize(8, method='cubic')", ValueError, r"`method`.*did you mean 'bicubic'"),
    ("resize(8, antialias='yes')", TypeError, r"`antialias` must be True or False"),
    ("resize_small(-1)", ValueError, r"`smaller_size` must be an integer >= 1"),
    ("resize_long(0)", ValueError, r"`longer_size` must be an integer >= 1"),
    ("central_crop((4, -1))", ValueError, r"`crop_size` must be a positive int"),
    ("random_crop(0)", ValueError, r"`crop_size` must be a positive int"),
    # crop areas and aspect ratios (percent, width/height)
    ("inception_crop(area_min=0)", ValueError, r"`area_min` must be .* > 0"),
    ("inception_crop(area_max=150)", ValueError, r"`area_max` must be .*<= 100"),
    ("inception_crop(16, area_min=50, area_max=20)", ValueError, r"`area_min` must"),
    (
        "decode_jpeg_and_inception_crop(ratio_min=2.0, ratio_max=1.0)",
        ValueError,
        r"`ratio_min` must be <= `ratio_max`",
    ),
    ("decode_jpeg_and_inception_crop(ratio_min=0)", ValueError, r"`ratio_min`"),
    # decode
    ("decode(channels=2)", ValueError, r"`channels` must be one of 0, 1, 3, 4"),
    ("decode(precise='yes')", TypeError, r"`precise` must be True or False"),
    ("decode(channels=4, precise=True)", ValueError, r"`channels` must be 0, 1 or 3"),
    # randaug
    ("randaug(0)", ValueError, r"`num_layers` must be an integer >= 1"),
    ("randaug(2, 11)", ValueError, r"`magnitude` must be .*<= 10"),
    ("randaug(2, -1)", ValueError, r"`magnitude` must be .*>= 0"),
    ("randaug(impl='kera')", ValueError, r"`impl`.*did you mean 'keras'"),
]


@pytest.mark.parametrize(
    "pp, error, match", PP_BUILD_CASES, ids=[c[0] for c in PP_BUILD_CASES]
)
def test_bad_pp_string_is_refused_when_built(pp, error, match):
    with pytest.raises(error, match=match) as info:
        get_preprocess_fn(pp)
    assert repr(pp) in str(info.value)  # the message quotes the pp string


def test_pp_string_must_be_a_string():
    with pytest.raises(TypeError, match="`pp_string` must be a str"):
        get_preprocess_fn(["decode", "resize(8)"])


def test_register_op_name_must_be_an_identifier():
    with pytest.raises(ValueError, match="`name` must be a Python identifier"):
        register_op("my op")


# ------------------------------------------ features: dtype, rank, keys --
# (pp string, features, exception, regex)
FEATURE_CASES = [
    (
        "value_range(-1, 1)",
        {"image": np.full((2, 2, 3), 0.5, np.float32)},
        ValueError,
        r"value_range.*float32.*value_range\(-1, 1, 0, 1\)",
    ),
    (
        "value_range(-1, 1, [0, 0], [1, 1])",
        {"image": _image()},
        ValueError,
        r"value_range.*2 values.*\(8, 8, 3\)",
    ),
    (
        "value_range(-1, 1)",
        {"image": tf.io.encode_png(_image())},
        ValueError,
        r"value_range.*encoded bytes.*decode",
    ),
    (
        "onehot(10, key='label')",
        {"label": np.int64(12)},
        ValueError,
        r"onehot.*'label'.*\[12\].*\[0, 10\)",
    ),
    (
        "onehot(10)",
        {"labels": np.array([3, -1, 11])},
        ValueError,
        r"onehot.*'labels'.*\[-1, 11\].*\[0, 10\)",
    ),
    (
        "onehot(10)",
        {"labels": np.array([0.0, 1.0], np.float32)},
        ValueError,
        r"onehot.*integer class ids.*float32",
    ),
    (
        "onehot(10)",
        {"labels": np.zeros((2, 2), np.int64)},
        ValueError,
        r"onehot.*rank 1.*\(2, 2\)",
    ),
    (
        "keep('imgae', 'label')",
        {"image": _image(), "label": 1},
        ValueError,
        r"keep.*\['imgae'\] not found.*\['image', 'label'\]",
    ),
    (
        "drop('idd')",
        {"image": _image(), "id": 1},
        ValueError,
        r"drop.*\['idd'\] not found.*\['id', 'image'\]",
    ),
    (
        "copy('img', 'x')",
        {"image": _image()},
        ValueError,
        r"copy.*\['img'\] not found.*\['image'\]",
    ),
    (
        "resize(8)",
        {"lbl": 1},
        ValueError,
        r"resize\(8\).*needs feature 'image'.*\['lbl'\]",
    ),
    (
        "central_crop(16)",
        {"image": _image(8, 12)},
        ValueError,
        r"central_crop.*\(16, 16\).*\(8, 12, 3\)",
    ),
    (
        "random_crop((4, 16))",
        {"image": _image(8, 8)},
        ValueError,
        r"random_crop.*\(4, 16\).*\(8, 8, 3\)",
    ),
    (
        "resize(4)",
        {"image": tf.io.encode_png(_image())},
        ValueError,
        r"resize.*encoded bytes.*put `decode` before",
    ),
    (
        "decode",
        {"image": _image()},
        ValueError,
        r"decode.*already decoded",
    ),
    (
        "decode_jpeg_and_inception_crop(4)",
        {"image": _image()},
        ValueError,
        r"decode_jpeg_and_inception_crop.*already decoded",
    ),
    (
        "flip_lr",
        {"image": np.zeros((8, 8), np.uint8)},
        ValueError,
        r"flip_lr.*\(height, width, channels\).*\(8, 8\)",
    ),
]


@pytest.mark.parametrize(
    "pp, features, error, match", FEATURE_CASES, ids=[c[0] for c in FEATURE_CASES]
)
def test_bad_features_are_refused_naming_the_op(pp, features, error, match):
    fn = get_preprocess_fn(pp)
    with pytest.raises(error, match=match):
        fn(dict(features))


# ----------------------------------------- data-dependent, inside tf.data --


def _dataset(pp, elements):
    """tf.data over ``elements`` (dicts) with images of unknown size."""
    fn = get_preprocess_fn(pp)
    ds = tf.data.Dataset.from_generator(
        lambda: iter(elements),
        output_signature={
            "image": tf.TensorSpec((None, None, 3), tf.uint8),
            "label": tf.TensorSpec((), tf.int64),
        },
    )
    return ds.map(fn)


def _elements(labels, size=8):
    return [{"image": _image(size, size), "label": np.int64(y)} for y in labels]


def test_onehot_label_out_of_range_fails_inside_tf_data():
    ds = _dataset("onehot(10, key='label')", _elements([3, 12]))
    it = iter(ds)
    assert int(np.argmax(next(it)["label"])) == 3  # a good label passes
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"onehot.*`label`.*\[0, 10\)[\s\S]*\[12\]"
    ):
        next(it)


@pytest.mark.parametrize("op", ["central_crop(16)", "random_crop((16, 4))"])
def test_crop_larger_than_a_dynamic_image_fails_inside_tf_data(op):
    ds = _dataset(op, _elements([0], size=8))
    name = op.split("(")[0]
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"{name}.*\(16, (16|4)\) is larger than the image[\s\S]*8 8 3",
    ):
        next(iter(ds))


def test_onehot_error_reaches_model_fit():
    # The assertion runs in tf.data, so it stops `fit` on every backend.
    ds = (
        _dataset("onehot(3, key='label')", _elements([0, 1, 5, 2]))
        .map(
            lambda d: (
                tf.cast(tf.reshape(d["image"][:1, :1, :1], (1,)), tf.float32),
                d["label"],
            )
        )
        .batch(2)
    )
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3)])
    model.compile("sgd", "categorical_crossentropy")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"onehot.*\[0, 3\)"):
        model.fit(ds, epochs=1, verbose=0, shuffle=False)


# ------------------------------------- allowed values, documented behaviour --


def test_float_image_with_explicit_range_is_mapped():
    image = np.array([[[0.0, 0.5, 1.0]]], np.float32)
    out = get_preprocess_fn("value_range(-1, 1, 0, 1)")({"image": image})["image"]
    np.testing.assert_array_equal(out.numpy(), [[[-1.0, 0.0, 1.0]]])
    # big_vision's reading of a float image, when asked for explicitly.
    out = get_preprocess_fn("value_range(0, 1, 0, 255)")({"image": image * 255})
    np.testing.assert_allclose(out["image"].numpy(), image, rtol=1e-7)


def test_integer_images_take_the_default_0_255_range():
    image = np.array([[[0, 51, 255]]], np.int64)  # e.g. uint8 data held as int64
    out = get_preprocess_fn("value_range(0, 1)")({"image": image})["image"]
    np.testing.assert_allclose(out.numpy(), [[[0.0, 0.2, 1.0]]], rtol=1e-7)


def test_inverted_ranges_are_allowed_and_clip_to_the_output_interval():
    image = np.array([[[0, 255, 300]]], np.float32)
    out = get_preprocess_fn("value_range(1, -1, 0, 255, clip_values=True)")(
        {"image": image}
    )["image"].numpy()
    np.testing.assert_allclose(out, [[[1.0, -1.0, -1.0]]], rtol=1e-7)
    out = get_preprocess_fn("value_range(0, 1, 255, 0)")({"image": image[..., :2]})
    np.testing.assert_allclose(out["image"].numpy(), [[[1.0, 0.0]]], rtol=1e-7)


def test_boundary_sizes_and_labels_are_accepted():
    out = get_preprocess_fn("central_crop((8, 12))|random_crop(8)")(
        {"image": _image(8, 12)}
    )["image"]
    assert out.shape == (8, 8, 3)
    labels = get_preprocess_fn("onehot(10)")({"labels": np.array([0, 9])})["labels"]
    np.testing.assert_array_equal(labels.numpy(), np.eye(10)[[0, 9]].max(0))


# --------------------------------------------------- make_dataset & co. --


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_bad_inputs"))


# (keyword arguments on top of a valid call, exception, regex)
MAKE_DATASET_CASES = [
    (dict(batch_size=0), ValueError, r"`batch_size` must be an integer >= 1, got 0"),
    (dict(batch_size=2.5), TypeError, r"`batch_size` must be an integer"),
    (dict(batch_size=6, num_devices=4), ValueError, r"divisible by num_devices"),
    (dict(num_devices=0), ValueError, r"`num_devices` must be an integer >= 1"),
    (dict(seed=1.5), TypeError, r"`seed` must be an integer"),
    (dict(seed="0"), TypeError, r"`seed` must be an integer"),
    (dict(seed=2**64), ValueError, r"`seed` must be an integer .*<= "),
    (dict(shuffle="yes"), TypeError, r"`shuffle` must be True or False"),
    (dict(repeat=None), TypeError, r"`repeat` must be True or False"),
    (dict(shuffle_buffer=0), ValueError, r"`shuffle_buffer` must be an integer >= 1"),
    (dict(start_batch=-1), ValueError, r"`start_batch` must be an integer >= 0"),
    (dict(mixup_p=-0.5), ValueError, r"`mixup_p` must be a finite number > 0"),
    (dict(mixup_p=float("nan")), ValueError, r"`mixup_p` must be a finite number"),
    (dict(process_count=0), ValueError, r"`process_count` must be an integer >= 1"),
    (
        dict(process_index=2, process_count=2),
        ValueError,
        r"`process_index` must be an integer >= 0 and <= 1, got 2",
    ),
    (dict(cache=1), TypeError, r"`cache` must be True, False or a file path"),
    (dict(label_key="image"), ValueError, r"`label_key` must differ from `image_key`"),
    (dict(image_key=0), TypeError, r"`image_key` must be a feature name"),
    (dict(skip_decode=(1,)), TypeError, r"`skip_decode\[0\]` must be a feature name"),
    (dict(num_parallel_calls=0), ValueError, r"`num_parallel_calls` must be"),
    (dict(prefetch=-5), ValueError, r"`prefetch` must be an integer >= 0"),
    (dict(pp="decode|resize(0)"), ValueError, r"`size` must be a positive int"),
    (dict(split="trian"), ValueError, r"`split` must be a split of.*'train'"),
    (dict(split="train[50:10]"), ValueError, r"`split` 'train\[50:10\]'.*no examples"),
    (dict(split="train[:200%]"), ValueError, r"`split` must be a split of"),
    (dict(split=5), TypeError, r"`split` must be a TFDS split string"),
    (dict(dataset="scalevit_digit"), ValueError, r"`dataset`.*'scalevit_digits'"),
    (dict(dataset=3), TypeError, r"`dataset` must be a TFDS name"),
]


@pytest.mark.parametrize(
    "kwargs, error, match",
    MAKE_DATASET_CASES,
    ids=[",".join(f"{k}={v!r}" for k, v in c[0].items()) for c in MAKE_DATASET_CASES],
)
def test_make_dataset_refuses_bad_arguments(digits_dir, kwargs, error, match):
    call = dict(
        dataset="scalevit_digits",
        split="train",
        pp=DIGITS_PP,
        batch_size=4,
        data_dir=digits_dir,
    )
    call.update(kwargs)
    with pytest.raises(error, match=match):
        make_dataset(**call)


def test_skip_decode_as_one_string_means_one_feature(digits_dir):
    # Documented: a bare string is one feature name, not its characters.
    ds = make_dataset(
        "scalevit_digits",
        "test[:4]",
        DIGITS_PP,
        4,
        data_dir=digits_dir,
        skip_decode="image",
        repeat=False,
    )
    images, labels = next(iter(ds))
    assert images.shape == (4, 8, 8, 3) and labels.shape == (4, 10)


def test_get_num_examples_checks_split_and_processes(digits_dir):
    with pytest.raises(ValueError, match=r"`split`.*did you mean 'test'"):
        get_num_examples("scalevit_digits", "tset", data_dir=digits_dir)
    with pytest.raises(ValueError, match=r"`process_index` must be"):
        get_num_examples(
            "scalevit_digits", "test", data_dir=digits_dir, process_index=1
        )


def test_check_batch_size_kinds():
    with pytest.raises(TypeError, match=r"`batch_size` must be an integer"):
        check_batch_size("8")
    with pytest.raises(ValueError, match=r"`num_processes` must be an integer >= 1"):
        check_batch_size(8, num_processes=0)


MIXUP_CASES = [
    (dict(p=0.0), ValueError, r"`p` must be a finite number > 0, got 0.0"),
    (dict(p="0.2"), TypeError, r"`p` must be a finite number"),
    (dict(keys="image"), TypeError, r"`keys` must be a tuple of feature names"),
    (dict(batch=[1, 2]), TypeError, r"`batch` must be a dict"),
    (dict(keys=("image", "label")), ValueError, r"mixup: feature 'label' not in"),
]


@pytest.mark.parametrize("kwargs, error, match", MIXUP_CASES)
def test_mixup_refuses_bad_arguments(kwargs, error, match):
    call = dict(
        batch={"image": np.zeros((2, 3), np.float32), "labels": np.eye(2, 3)},
        p=0.2,
        seed=[0, 1],
    )
    call.update(kwargs)
    with pytest.raises(error, match=match):
        mixup(**call)


def test_sample_mixup_weight_refuses_bad_p():
    with pytest.raises(ValueError, match=r"`p` must be a finite number > 0"):
        sample_mixup_weight(-1.0, [0, 1])


@pytest.mark.parametrize(
    "images, match",
    [
        (np.full((8, 8), 17), r"grey levels 0\.\.16"),
        (np.full((8, 8), 1.5), r"grey levels 0\.\.16"),
        (np.full((8, 8), -1), r"grey levels 0\.\.16"),
    ],
)
def test_digits_to_uint8_refuses_values_outside_0_16(images, match):
    with pytest.raises(ValueError, match=rf"`images` must .*{match}"):
        digits_to_uint8(images)
