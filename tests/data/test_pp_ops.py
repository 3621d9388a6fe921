"""big_vision pp ops: fixture parity, parser errors, and random-op statistics.

Deterministic ops are compared with big_vision's TF outputs in
``misc/pp_ops.npz`` (uint8 exactly, float32 to 1e-6 relative: the same float32
ops in the same order). Random ops cannot match across implementations; they
are checked for invariants and against independent NumPy references and scipy
distributions, with fixed seeds (so the statistical checks are deterministic).
"""

import json

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from conftest import BV_FIXTURES, load_fixture, rel_err

from keras_scalevit.data import SEED_KEY, available_ops, get_preprocess_fn
from keras_scalevit.data.builder import parse_op_spec, split_pp_string
from keras_scalevit.data.randaug import keras_cv_available

PP_FIXTURE = "misc/pp_ops.npz"

# Stateful TF random ops: none may appear in a pp graph (reproducibility).
_STATEFUL_RANDOM_OPS = {
    "RandomUniform",
    "RandomUniformInt",
    "RandomStandardNormal",
    "TruncatedNormal",
    "RandomGamma",
    "RandomShuffle",
    "RandomPoissonV2",
    "Multinomial",
    "StatefulUniform",
    "StatefulUniformInt",
    "StatefulUniformFullInt",
    "StatefulStandardNormalV2",
    "StatefulTruncatedNormal",
    "RngReadAndSkip",
    "RngSkip",
    "SampleDistortedBoundingBox",
    "SampleDistortedBoundingBoxV2",
}


def _fixture_specs():
    manifest = BV_FIXTURES / "manifest.json"
    if not manifest.is_file():
        return ["<fixtures absent>"]
    with open(manifest) as f:
        return sorted(json.load(f)["files"][PP_FIXTURE]["specs"])


@pytest.fixture(scope="module")
def pp_fx():
    return load_fixture(PP_FIXTURE)


@pytest.fixture(scope="module")
def pp_specs(bv_manifest):
    return bv_manifest["files"][PP_FIXTURE]["specs"]


def _dataset_op_types(ds):
    """All op types in a tf.data pipeline's graph, map functions included."""
    graph_def = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    types = {n.op for n in graph_def.node}
    for f in graph_def.library.function:
        types |= {n.op for n in f.node_def}
    return types


def _seed_dataset(pp_string, image, n, salt=0):
    """tf.data of pp applied to one image with n different example seeds."""
    pp = get_preprocess_fn(pp_string)
    image = tf.constant(image)
    return tf.data.Dataset.range(n).map(
        lambda i: pp(
            {"image": image, SEED_KEY: tf.stack([i, tf.constant(salt, tf.int64)])}
        )["image"]
    )


def _map_over_seeds(pp_string, image, n, salt=0):
    return list(_seed_dataset(pp_string, image, n, salt).as_numpy_iterator())


def _coordinate_image(h, w):
    """uint8 image whose channels hold (row, col, 0): crops reveal their box."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)


# ---------------------------------------------------------------- fixtures --


@pytest.mark.parametrize(
    "name", [n for n in _fixture_specs() if not n.startswith("onehot")]
)
def test_image_ops_match_big_vision(pp_fx, pp_specs, name):
    spec = pp_specs[name]
    out = get_preprocess_fn(spec)({"image": tf.constant(pp_fx["image"])})[
        "image"
    ].numpy()
    ref = pp_fx[name]
    assert out.dtype == ref.dtype, spec
    assert out.shape == ref.shape, spec
    if ref.dtype == np.uint8:
        np.testing.assert_array_equal(out, ref, err_msg=spec)
    else:
        assert rel_err(out, ref) <= 1e-6, spec


def test_onehot_matches_big_vision(pp_fx, pp_specs):
    # The fixture stores outputs only; its inputs are the hot positions
    # (label 3; labels {1, 3}; label 7). A duplicate label checks "count once".
    cases = {
        "onehot_scalar": {"label": tf.constant(3, tf.int64)},
        "onehot_multi": {"labels": tf.constant([3, 1, 3], tf.int64)},
        "onehot_onoff": {"label": tf.constant(7, tf.int64)},
    }
    for name, features in cases.items():
        spec = pp_specs[name]
        out = get_preprocess_fn(spec)(features)["labels"].numpy()
        assert out.dtype == pp_fx[name].dtype, spec
        np.testing.assert_array_equal(out, pp_fx[name], err_msg=spec)


def test_onehot_against_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=5)
    out = get_preprocess_fn("onehot(7, multi=False, on=0.8, off=0.05)")(
        {"labels": labels}
    )
    ref = np.where(np.eye(7)[labels] > 0, 0.8, 0.05).astype(np.float32)
    np.testing.assert_allclose(out["labels"].numpy(), ref, rtol=0, atol=0)
    multi = get_preprocess_fn("onehot(7)")({"labels": labels})["labels"].numpy()
    np.testing.assert_array_equal(
        multi, np.isin(np.arange(7), labels).astype(np.float32)
    )


def test_value_range_per_channel_and_clip():
    x = np.array([[[0, 128, 255], [10, 20, 300]]], np.float32)
    out = get_preprocess_fn(
        "value_range(0, 1, in_min=[0, 0, 0], in_max=[255, 128, 255], clip_values=True)"
    )({"image": x})["image"].numpy()
    ref = np.clip(x / np.array([255, 128, 255], np.float32), 0, 1)
    np.testing.assert_allclose(out, ref, rtol=1e-7)


# -------------------------------------------------------- parser & errors --


def test_parser_splits_and_parses_literals():
    assert split_pp_string("decode|keep('a|b', \"c\")||flip_lr") == [
        "decode",
        "keep('a|b', \"c\")",
        "flip_lr",
    ]
    assert parse_op_spec("resize((16, 24), method='area', antialias=True)") == (
        "resize",
        ((16, 24),),
        {"method": "area", "antialias": True},
    )


def test_key_inkey_outkey():
    image = np.zeros((8, 6, 3), np.uint8)
    out = get_preprocess_fn("resize(4, inkey='image', outkey='small')")(
        {"image": image}
    )
    assert out["image"].shape == (8, 6, 3) and out["small"].shape == (4, 4, 3)
    out = get_preprocess_fn("central_crop(2, key='other')")(
        {"other": image, "image": image}
    )
    assert out["other"].shape == (2, 2, 3) and out["image"].shape == (8, 6, 3)
    out = get_preprocess_fn("copy('image', 'x')|drop('image')|keep('x')")(
        {"image": image, "y": 1}
    )
    assert sorted(out) == ["x"]


def test_required_ops_registered():
    required = {
        "decode", "resize", "resize_small", "resize_long", "central_crop",
        "random_crop", "inception_crop", "decode_jpeg_and_inception_crop",
        "flip_lr", "value_range", "onehot", "keep", "drop", "copy", "randaug",
    }  # fmt: skip
    assert required <= set(available_ops())


@pytest.mark.parametrize(
    "pp, op, error, fragment",
    [
        ("decode|resise(224)|flip_lr", "resise", ValueError, "did you mean 'resize'"),
        ("decode|resize(-3)", "resize", ValueError, "`size` must be"),
        ("resize(8, methd='area')", "resize", TypeError, "did you mean 'method'"),
        ("resize(8, method='cubic')", "resize", ValueError, "got 'cubic'"),
        (
            "inception_crop(224, area_min=50, area_max=20)",
            "inception_crop",
            ValueError,
            "area_min",
        ),
        ("onehot(0)", "onehot", ValueError, "`depth` must be an integer >= 1, got 0"),
        ("value_range('a')", "value_range", TypeError, "`vmin` must be"),
        ("randaug(2, magnitude=30)", "randaug", ValueError, "`magnitude`"),
        ("randaug(impl='torchvision')", "randaug", ValueError, "got 'torchvision'"),
        ("keep(image)", "keep(image)", ValueError, "literals"),
        ("resize(__import__('os').getcwd())", "resize", ValueError, "literals"),
        ("resize(8", "resize(8", ValueError, "cannot parse"),
    ],
)
def test_bad_pp_string_errors_quote_the_string(pp, op, error, fragment):
    with pytest.raises(error) as e:
        get_preprocess_fn(pp)
    msg = str(e.value)
    assert repr(pp) in msg and op in msg and fragment in msg


def test_missing_feature_error_names_op_and_keys():
    with pytest.raises(ValueError, match="onehot.*'label'.*features are \\['image'\\]"):
        get_preprocess_fn("onehot(10, key='label')")(
            {"image": np.zeros((2, 2, 3), np.uint8)}
        )


def test_decode_rejects_decoded_images():
    with pytest.raises(ValueError, match="already decoded"):
        get_preprocess_fn("decode")({"image": np.zeros((2, 2, 3), np.uint8)})


def test_non_string_pp_is_type_error():
    with pytest.raises(TypeError, match="pp_string"):
        get_preprocess_fn(["decode"])


# ------------------------------------------------------------ decode ops --


def test_decode_png_roundtrip_and_jpeg_crop():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    png = tf.io.encode_png(image)
    np.testing.assert_array_equal(
        get_preprocess_fn("decode")({"image": png})["image"], image
    )

    smooth = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 48, 0)
    jpeg = tf.io.encode_jpeg(np.repeat(smooth, 3, -1), quality=95)
    crops = _map_over_seeds(
        "decode_jpeg_and_inception_crop(area_min=40, area_max=60)", jpeg, 64
    )
    for c in crops:
        h, w, ch = c.shape
        assert ch == 3 and 0.4 * 48 * 64 <= h * w <= 0.6 * 48 * 64
        assert 0.75 - 0.5 / h <= w / h <= 1.33 + 0.5 / h
    sized = _map_over_seeds("decode_jpeg_and_inception_crop(16)", jpeg, 4)
    assert all(c.shape == (16, 16, 3) and c.dtype == np.uint8 for c in sized)


# ------------------------------------------------------------ random ops --


def _np_inception_box(rng, H, W, area_min, area_max, ratio_min=0.75, ratio_max=1.33):
    """Independent NumPy transcription of TF's SampleDistortedBoundingBox
    algorithm with no object boxes (spec section 9): aspect ratio uniform,
    height uniform between the heights of the min and max areas, width =
    round(height * ratio), one +/-1 height repair, 100 attempts, else whole."""
    min_area, max_area = area_min / 100 * H * W, area_max / 100 * H * W
    for _ in range(100):
        ratio = rng.uniform(ratio_min, ratio_max)
        h = int(np.rint(np.sqrt(min_area / ratio)))
        h_max = int(np.rint(np.sqrt(max_area / ratio)))
        if np.rint(h_max * ratio) > W:
            h_max = int((W + 0.5 - 1e-7) / ratio)
            if np.rint(h_max * ratio) > W:
                h_max -= 1
        h_max = min(h_max, H)
        h = min(h, h_max)
        if h < h_max:
            h += int(rng.integers(0, h_max - h + 1))
        w = int(np.rint(h * ratio))
        if w * h < min_area:
            h += 1
            w = int(np.rint(h * ratio))
        if w * h > max_area:
            h -= 1
            w = int(np.rint(h * ratio))
        if min_area <= w * h <= max_area and 0 < w <= W and 0 < h <= H:
            return h, w
    return H, W


@pytest.mark.parametrize("area_min, area_max", [(5, 100), (30, 60)])
def test_inception_crop_box_distribution(area_min, area_max):
    H, W, n = 60, 80, 1500
    image = _coordinate_image(H, W)
    crops = _map_over_seeds(
        f"inception_crop(area_min={area_min}, area_max={area_max})", image, n
    )
    hs = np.array([c.shape[0] for c in crops])
    ws = np.array([c.shape[1] for c in crops])
    for c in crops:  # a contiguous window of the image, inside it
        y0, x0 = int(c[0, 0, 0]), int(c[0, 0, 1])
        h, w = c.shape[:2]
        np.testing.assert_array_equal(c, image[y0 : y0 + h, x0 : x0 + w])
    frac = hs * ws / (H * W)
    assert frac.min() >= area_min / 100 and frac.max() <= area_max / 100
    ratio = ws / hs
    assert np.all(ratio >= 0.75 - 0.5 / hs) and np.all(ratio <= 1.33 + 0.5 / hs)

    rng = np.random.default_rng(0)
    ref = np.array(
        [_np_inception_box(rng, H, W, area_min, area_max) for _ in range(6000)]
    )
    ref_frac = ref[:, 0] * ref[:, 1] / (H * W)
    # Same distribution: two-sample KS on the area fraction, and the mean
    # aspect ratio within 4 standard errors.
    assert scipy.stats.ks_2samp(frac, ref_frac).pvalue > 1e-3
    ref_ratio = ref[:, 1] / ref[:, 0]
    se = np.sqrt(ratio.var() / n + ref_ratio.var() / len(ref))
    assert abs(ratio.mean() - ref_ratio.mean()) < 4 * se


def test_inception_crop_resizes_and_is_seeded():
    image = _coordinate_image(50, 70)
    a = _map_over_seeds("inception_crop(24)", image, 8)
    b = _map_over_seeds("inception_crop(24)", image, 8)
    c = _map_over_seeds("inception_crop(24)", image, 8, salt=1)
    assert all(x.shape == (24, 24, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_flip_lr_is_half_flips():
    image = np.random.default_rng(2).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    n = 2000
    outs = _map_over_seeds("flip_lr", image, n)
    flipped = [np.array_equal(o, image[:, ::-1]) for o in outs]
    same = [np.array_equal(o, image) for o in outs]
    assert all(f != s for f, s in zip(flipped, same, strict=True))
    assert scipy.stats.binomtest(sum(flipped), n, 0.5).pvalue > 1e-3


def test_random_crop_positions_uniform():
    H, W = 20, 30
    image = _coordinate_image(H, W)
    crops = _map_over_seeds("random_crop((8, 10))", image, 1500)
    ys = np.array([c[0, 0, 0] for c in crops])
    xs = np.array([c[0, 0, 1] for c in crops])
    for c, y, x in zip(crops, ys, xs, strict=True):
        np.testing.assert_array_equal(c, image[y : y + 8, x : x + 10])
    # tf.image.random_crop: offsets uniform over all positions 0..H-h.
    assert set(ys) == set(range(H - 8 + 1)) and set(xs) == set(range(W - 10 + 1))
    assert scipy.stats.chisquare(np.bincount(xs, minlength=W - 10 + 1)).pvalue > 1e-3


def test_random_ops_use_only_stateless_kernels():
    image = np.zeros((16, 16, 3), np.uint8)
    ds = _seed_dataset("inception_crop(8)|flip_lr|random_crop(6)", image, 2)
    types = _dataset_op_types(ds)
    assert "StatelessSampleDistortedBoundingBox" in types  # the scan sees map fns
    assert not types & _STATEFUL_RANDOM_OPS, types & _STATEFUL_RANDOM_OPS


_IMPLS = ["keras"] + (["keras_cv"] if keras_cv_available() else [])


@pytest.mark.parametrize("impl", _IMPLS)
def test_randaug_outputs_and_determinism(impl):
    # Values in 40..200, so that auto-contrast and equalize change it too.
    image = np.random.default_rng(3).integers(40, 200, (16, 16, 3), dtype=np.uint8)
    # Parallel map: a stateful generator would give a run-dependent stream.
    # Keras' layer traces slowly (every op is computed and selected with
    # `where`), so it gets one layer; keras-cv gets big_vision's default two.
    num_layers = 1 if impl == "keras" else 2
    ds = _seed_dataset(f"randaug({num_layers}, 9, impl='{impl}')", image, 8)
    ds = ds.map(lambda x: x, num_parallel_calls=2)
    a, b = list(ds.as_numpy_iterator()), list(ds.as_numpy_iterator())
    assert all(x.shape == image.shape and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    changed = sum(not np.array_equal(x, image) for x in a)
    distinct = len({x.tobytes() for x in a})
    assert changed >= 7 and distinct >= 6, (changed, distinct)
    types = _dataset_op_types(ds)
    assert not types & _STATEFUL_RANDOM_OPS, types & _STATEFUL_RANDOM_OPS


def test_randaug_keeps_float_dtype_and_eager_call_works():
    image = np.full((8, 8, 3), 100.0, np.float32)
    out = get_preprocess_fn("randaug(1, 5, impl='keras')")(
        {"image": image, SEED_KEY: tf.constant([1, 2], tf.int64)}
    )["image"]
    assert out.dtype == tf.float32 and out.shape == (8, 8, 3)
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0


def test_randaug_keras_cv_missing_is_clear_error():
    if keras_cv_available():
        pytest.skip("keras-cv is installed; the missing-extra error cannot occur.")
    with pytest.raises(ValueError, match="keras-cv"):
        get_preprocess_fn("randaug(impl='keras_cv')")
