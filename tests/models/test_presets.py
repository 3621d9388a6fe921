"""Presets: keras-hub directories, handles, downloads, the registry, the shipped preset.

No network: URLs are served by a loopback HTTP server on 127.0.0.1 from the
big_vision fixtures (skipped when the fixtures are absent) or from files the
test writes; the Keras cache is redirected to ``tmp_path`` (``KERAS_HOME``).
"""

import functools
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
from conftest import BV_FIXTURES, load_fixture, rel_err

import keras_scalevit
from keras_scalevit.convert import infer_config, normalize_checkpoint
from keras_scalevit.models import (
    ViTBackbone,
    ViTClassifier,
    ViTImageClassifierPreprocessor,
    decode_variant,
    preset_utils,
)
from keras_scalevit.models.vit.vit_presets import PRESETS, preset_params

# Fidelity tolerance of tests/models/test_fidelity.py: float32 round-off (big_vision's
# own float32 outputs sit within 7.6e-7 of float64; a real mistake moves >= 1e-3).
TOL = 1e-5


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Each test gets its own Keras cache and a short download timeout."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(preset_utils.DOWNLOAD_TIMEOUT_ENV, "5")


def _cache_files(tmp_path):
    d = tmp_path / "keras_home" / preset_utils.CACHE_SUBDIR
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """``serve(directory)`` -> base URL of a loopback server (stopped at teardown)."""
    servers = []

    def start(directory):
        handler = functools.partial(_Quiet, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _fixtures_dir():
    load_fixture("models/vit_map_learn.npz")  # skips with a message when absent
    return BV_FIXTURES / "models"


# ------------------------------------------------------------------ downloads


@pytest.mark.parametrize(
    "name", ["vit_map_learn.npz", "vit_tok_learn_rep24_legacy.npz"]
)
def test_http_npz_gives_the_fixture_logits(name, serve, tmp_path):
    data = load_fixture(f"models/{name}")
    base = serve(_fixtures_dir())
    model = ViTClassifier.from_preset(f"{base}/{name}")
    logits = _np(model(data["inputs/images"]))
    assert rel_err(logits, data["outputs/logits"]) <= TOL
    assert len(_cache_files(tmp_path)) == 1
    # The preprocessor of an unregistered .npz resizes to the model's input and
    # maps [0, 255] to [-1, 1], big_vision's convention.
    assert model.preprocessor.image_size == model.backbone.image_size
    raw = np.round((data["inputs/images"] + 1.0) * 127.5).clip(0, 255)
    scaled = _np(model.preprocessor(raw.astype("uint8")))
    assert np.abs(scaled - raw / 127.5 + 1.0).max() < 1e-6


def test_sha256_rejects_a_tampered_file_and_leaves_no_cache_entry(serve, tmp_path):
    # Any .npz will do (no fixture needed, so this runs in a user's clone too).
    src = tmp_path / "src.npz"
    np.savez(src, **{"embedding/kernel": np.arange(4096, dtype="float32")})
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    served = tmp_path / "served"
    served.mkdir()
    payload = bytearray(src.read_bytes())
    payload[len(payload) // 2] ^= 0xFF  # one flipped byte
    (served / "ckpt.npz").write_bytes(bytes(payload))
    base = serve(served)
    with pytest.raises(ValueError, match="SHA-256"):
        preset_utils.download(f"{base}/ckpt.npz", sha256=good)
    assert _cache_files(tmp_path) == []
    # The genuine file passes the same check and is cached once.
    shutil.copy(src, served / "ckpt.npz")
    path = preset_utils.download(f"{base}/ckpt.npz", sha256=good)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == good
    assert len(_cache_files(tmp_path)) == 1


def test_truncated_or_missing_downloads_leave_no_cache_entry(serve, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "half.npz").write_bytes(b"PK\x03\x04 not a whole zip file")
    base = serve(served)
    with pytest.raises(ValueError, match="not a readable .npz"):
        preset_utils.download(f"{base}/half.npz")
    with pytest.raises(OSError, match="not in the cache"):
        preset_utils.download(f"{base}/missing.npz")
    assert _cache_files(tmp_path) == []


def test_offline_uncached_preset_fails_fast_in_one_line():
    # A port nobody listens on: the connection is refused at once, as offline.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        ViTClassifier.from_preset(f"http://127.0.0.1:{port}/model.npz")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message and "not in the cache" in message


def test_gs_urls_are_read_through_their_public_https_form():
    assert (
        preset_utils._https("gs://big_vision/vit_s16_i1k_90ep.npz")
        == "https://storage.googleapis.com/big_vision/vit_s16_i1k_90ep.npz"
    )


# ------------------------------------------------------------ save / load


def _digits_images(n=16):
    from sklearn.datasets import load_digits

    from keras_scalevit.data.digits import digits_split_indices, digits_to_uint8

    d = load_digits()
    idx = digits_split_indices()["test"]
    return digits_to_uint8(d.images[idx][:n]), d.target[idx][:n]


def test_directory_layout_is_keras_hubs(tmp_path):
    model = ViTClassifier.from_preset("vit_digits")
    path = model.save_to_preset(tmp_path / "p", metadata={"note": "x"})
    files = sorted(os.listdir(path))
    assert files == [
        "config.json",
        "metadata.json",
        "model.weights.h5",
        "preprocessor.json",
        "task.json",
        "task.weights.h5",
    ]
    config = json.load(open(os.path.join(path, "config.json")))
    assert config["registered_name"] == "keras_scalevit>ViTBackbone"
    assert "build_config" not in config and "compile_config" not in config
    task = json.load(open(os.path.join(path, "task.json")))
    assert task["registered_name"] == "keras_scalevit>ViTClassifier"
    meta = json.load(open(os.path.join(path, "metadata.json")))
    assert meta["keras_version"] == keras.version()
    assert meta["keras_scalevit_version"] == keras_scalevit.__version__
    assert meta["parameter_count"] == model.backbone.count_params()
    assert meta["note"] == "x"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pool_type="gap", rep_size=True, posemb="sincos2d"),
        dict(pool_type="tok"),
        dict(pool_type="map"),
    ],
    ids=["gap_rep_sincos", "tok", "map"],
)
def test_round_trip_gives_identical_logits(kwargs, tmp_path):
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=3, image_size=16, head_zeroinit=False, **kwargs
    )
    for w in model.weights:  # non-trivial values everywhere (zero-init head too)
        w.assign(np.random.default_rng(len(w.path)).normal(size=w.shape) * 0.2)
    model.save_to_preset(tmp_path / "p")
    loaded = ViTClassifier.from_preset(str(tmp_path / "p"))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(_np(loaded(x)), _np(model(x)))
    backbone = ViTBackbone.from_preset(str(tmp_path / "p"))
    np.testing.assert_array_equal(_np(backbone(x)), _np(model.backbone(x)))


def test_backbone_round_trip(tmp_path):
    backbone = ViTBackbone.from_variant("mu/8", image_size=16)
    backbone.save_to_preset(tmp_path / "b")
    loaded = ViTBackbone.from_preset(tmp_path / "b")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(_np(loaded(x)), _np(backbone(x)))
    # A backbone-only preset needs num_classes for a classifier.
    with pytest.raises(ValueError, match="only a backbone"):
        ViTClassifier.from_preset(tmp_path / "b")
    head = ViTClassifier.from_preset(tmp_path / "b", num_classes=4)
    assert _np(head(x)).tolist() == [[0.0] * 4] * 2  # fresh zero-initialised head


_OTHER = {"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}

_SUBPROCESS = """
import sys, numpy as np, keras_scalevit
model = keras_scalevit.models.ViTClassifier.from_preset(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], keras_scalevit.models.ViTClassifier.predict(model, x, verbose=0))
model.save_to_preset(sys.argv[4])
"""


@pytest.mark.slow
def test_presets_load_across_backends(tmp_path):
    """A preset written here loads under another backend, and back."""
    other = _OTHER[keras.config.backend()]
    model = ViTClassifier.from_preset("vit_digits")
    model.save_to_preset(tmp_path / "here")
    images, _ = _digits_images()
    np.save(tmp_path / "x.npy", images)
    env = dict(os.environ, KERAS_BACKEND=other)
    root = os.path.dirname(os.path.dirname(keras_scalevit.__file__))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run(
        [
            sys.executable,
            "-c",
            _SUBPROCESS,
            str(tmp_path / "here"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
            str(tmp_path / "there"),
        ],
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    ours = model.predict(images, verbose=0)
    theirs = np.load(tmp_path / "y.npy")
    # Same weights, another backend's float32 kernels: round-off only.
    assert rel_err(theirs, ours) <= TOL
    back = ViTClassifier.from_preset(tmp_path / "there")
    np.testing.assert_array_equal(back.predict(images, verbose=0), ours)


def test_shipped_preset_classifies_digits_at_its_recorded_accuracy():
    meta = json.load(
        open(
            os.path.join(
                preset_utils.PACKAGE_PRESETS_DIR, "vit_digits", "metadata.json"
            )
        )
    )
    images, labels = _digits_images(n=None)
    assert len(labels) == meta["test_examples"] == 359
    model = ViTClassifier.from_preset("vit_digits")
    scores = model.predict(images, verbose=0)
    assert scores.shape == (359, 10)
    correct = int(np.sum(scores.argmax(-1) == labels))
    # Recorded on JAX; another backend's float32 round-off may flip a near tie.
    assert abs(correct - round(meta["test_accuracy"] * 359)) <= 1
    assert meta["test_accuracy"] > 0.95


def test_num_classes_and_image_size_overrides():
    base = ViTClassifier.from_preset("vit_digits")
    model = ViTClassifier.from_preset("vit_digits", num_classes=3)
    images, _ = _digits_images(4)
    np.testing.assert_array_equal(model.predict(images, verbose=0), np.zeros((4, 3)))
    assert model.preprocessor.class_names is None  # the digit names no longer fit
    hires = ViTClassifier.from_preset("vit_digits", image_size=16)
    assert hires.backbone.grid_size == (8, 8)
    assert hires.preprocessor.pp_string.startswith("resize(20)|central_crop(16)")
    assert hires.predict(images, verbose=0).shape == (4, 10)
    # The body is the preset's: same encoder weights apart from the posemb.
    np.testing.assert_array_equal(
        _np(hires.backbone.embedding.weights[0]),
        _np(base.backbone.embedding.weights[0]),
    )
    shape_only = ViTClassifier.from_preset("vit_digits", load_weights=False)
    assert shape_only.count_params() == base.count_params()


def test_predict_takes_raw_images_of_any_size_and_lists():
    model = ViTClassifier.from_preset("vit_digits")
    images, _ = _digits_images(3)
    big = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)  # 32x32 uint8
    assert model.predict(big, verbose=0).shape == (3, 10)
    # Floats in [0, 255] are the same pixels as uint8 (big_vision decodes to uint8).
    as_list = model.predict([im.astype("float32") for im in images], verbose=0)
    np.testing.assert_array_equal(as_list, model.predict(images, verbose=0))
    # Raw uint8 digits go through resize(10)|central_crop(8)|value_range(-1, 1):
    # compare with the training pipeline's own ops on the same images.
    from keras_scalevit.data import get_preprocess_fn

    pp = get_preprocess_fn("resize(10)|central_crop(8)|value_range(-1, 1)")
    ref = np.stack([pp({"image": im})["image"].numpy() for im in images])
    # Graph (tf.function) vs eager evaluation of value_range's two float32
    # operations may round differently: one ulp of values in [-1, 1] is 1.2e-7.
    np.testing.assert_allclose(
        _np(model.preprocessor(images)), ref, rtol=0, atol=1.2e-7
    )


# ----------------------------------------------------------------- registry


def _synthetic_checkpoint(entry):
    """Arrays of the entry's shapes in the file's layout, without memory.

    ``np.broadcast_to`` views take no space, so even g-opt/16 costs nothing.
    """
    a = entry["arch"]
    v = decode_variant(a["variant"])
    v.update({k: a[k] for k in ("width", "depth", "num_heads") if k in a})
    if "width" in a:
        v["mlp_dim"] = 4 * a["width"]
    d, m, h, p = v["width"], v["mlp_dim"], v["num_heads"], v["patch_size"]
    grid = (a["image_size"] // p) ** 2
    url = entry["url"] or ""
    legacy = "vit_models/augreg" in url
    scan = url.endswith(":img")

    def z(*shape):
        return np.broadcast_to(np.float32(0), shape)

    block = {
        "LayerNorm_0/scale": (d,),
        "LayerNorm_1/scale": (d,),
        "MultiHeadDotProductAttention_0/query/kernel": (d, h, d // h),
        "MultiHeadDotProductAttention_0/out/kernel": (h, d // h, d),
        "MlpBlock_0/Dense_0/kernel": (d, m),
        "MlpBlock_0/Dense_1/kernel": (m, d),
    }
    if legacy:  # pre-Linen numbering of the augreg files
        block = {
            k.replace("LayerNorm_1", "LayerNorm_2")
            .replace("MultiHeadDotProductAttention_0", "MultiHeadDotProductAttention_1")
            .replace("MlpBlock_0", "MlpBlock_3"): s
            for k, s in block.items()
        }
    params = {"embedding/kernel": z(p, p, 3, d), "Transformer/encoder_norm/scale": z(d)}
    for k, s in block.items():
        if scan:
            params[f"Transformer/encoderblock/{k}"] = z(v["depth"], *s)
        else:
            for i in range(v["depth"]):
                params[f"Transformer/encoderblock_{i}/{k}"] = z(*s)
    if a["posemb"] == "learn":
        if legacy:
            params["Transformer/posembed_input/pos_embedding"] = z(1, grid + 1, d)
        else:
            params["pos_embedding"] = z(1, grid, d)
    if a["pool_type"] == "tok":
        params["cls"] = z(1, 1, d)
    if a["pool_type"] == "map":
        params["MAPHead_0/probe"] = z(1, 1, d)
    if a["rep_size"]:
        params["pre_logits/kernel"] = z(d, a["rep_size"])
    if a["num_classes"]:
        params["head/kernel"] = z(a["rep_size"] or d, a["num_classes"])
    if scan:  # SigLIP files: the image tower under params/img/, a text tower too
        params = {f"params/img/{k}": x for k, x in params.items()}
        params["params/txt/Encoder_0/encoder_norm/scale"] = z(d)
        params["params/t"] = z(1)
    return normalize_checkpoint(params)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_registry_architecture_agrees_with_the_converter(name):
    entry = PRESETS[name]
    a = entry["arch"]
    cfg = infer_config(_synthetic_checkpoint(entry))
    v = decode_variant(a["variant"])
    v.update({k: a[k] for k in ("width", "depth", "num_heads") if k in a})
    assert cfg["width"] == v["width"] and cfg["depth"] == v["depth"]
    assert cfg["num_heads"] == v["num_heads"]
    assert cfg["mlp_dim"] == (4 * a["width"] if "width" in a else v["mlp_dim"])
    assert cfg["patch_size"] == (v["patch_size"],) * 2
    assert cfg["posemb"] == a["posemb"]
    assert (cfg["pool_type"] or "gap") == a["pool_type"]
    assert cfg["rep_size"] == a["rep_size"]
    assert cfg["num_classes"] == a["num_classes"]
    if a["posemb"] == "learn":
        assert cfg["grid_tokens"] == (a["image_size"] // v["patch_size"]) ** 2
    # The preprocessor feeds exactly the model's input size.
    pre = entry["preprocessor"]
    if pre is not None:
        assert (
            tuple(ViTImageClassifierPreprocessor(**pre).image_size)
            == (a["image_size"],) * 2
        )


def test_registry_urls_and_names():
    urls = [e["url"] for e in PRESETS.values() if e["url"]]
    assert len(set(urls)) == len(urls)
    for url in urls:
        assert url.startswith(("gs://vit_models/augreg/", "gs://big_vision/"))
        assert ".npz" in url
    listed = keras_scalevit.list_presets()
    assert set(listed) == set(PRESETS)
    assert all(isinstance(t, str) and "\n" not in t for t in listed.values())
    # big_vision's vanity names resolve to the same entries.
    assert (
        preset_utils.get_preset_entry("howto-i21k-B/16")["url"]
        == (PRESETS["vit_b16_i21k_augreg"]["url"])
    )


def test_registry_parameter_count_matches_a_built_model():
    entry = PRESETS["vit_ti16_i21k_augreg"]
    model = ViTClassifier.from_preset("vit_ti16_i21k_augreg", load_weights=False)
    assert model.count_params() == preset_params(entry)
    assert model.pool_type == "tok" and model.num_classes == 21843
    digits = ViTClassifier.from_preset("vit_digits")
    assert digits.count_params() == preset_params(PRESETS["vit_digits"])


# ------------------------------------------------------- class names, errors


def test_decode_predictions_uses_the_presets_activation_and_names():
    names1k = preset_utils.class_names("imagenet1k")
    names21k = preset_utils.class_names("imagenet21k")
    assert len(names1k) == 1000 and names1k[0] == "tench"
    assert len(names21k) == 21843
    logits = np.zeros((1, 1000), "float32")
    logits[0, 1] = 2.0
    (sig,) = keras_scalevit.decode_predictions(logits, "vit_s16_i1k_90ep", top=2)
    (soft,) = keras_scalevit.decode_predictions(logits, "deit3_s16_224_1k", top=2)
    assert sig[0][0] == soft[0][0] == "goldfish"
    assert sig[1][1] == pytest.approx(0.5)  # sigmoid(0)
    assert soft[1][1] == pytest.approx(1.0 / (999 + np.exp(2.0)))  # softmax
    with pytest.raises(ValueError, match="no class names"):
        keras_scalevit.decode_predictions(np.zeros((1, 768)), "siglip_b16_224")
    with pytest.raises(ValueError, match="classes"):
        keras_scalevit.decode_predictions(np.zeros((1, 5)), "vit_digits")


def test_bad_handles_and_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'vit_digits'"):
        ViTClassifier.from_preset("vit_digit")
    with pytest.raises(TypeError, match="`preset` must be"):
        ViTClassifier.from_preset(3)
    with pytest.raises(ValueError, match="without config.json"):
        ViTClassifier.from_preset(str(tmp_path))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a big_vision .npz"):
        ViTClassifier.from_preset(str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="must point to a big_vision .npz"):
        ViTClassifier.from_preset("https://example.invalid/model.h5")
    with pytest.raises(ValueError, match="Unknown preset"):
        ViTClassifier.from_preset("ftp://example.invalid/model.npz")
    with pytest.raises(ValueError, match="num_classes"):
        ViTClassifier.from_preset("vit_digits", num_classes=-1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ViTClassifier.from_preset("vit_digits", num_clases=3)
    with pytest.raises(TypeError, match="load_weights"):
        ViTBackbone.from_preset("vit_digits", load_weights="yes")
    with pytest.raises(ValueError, match="sha256"):
        preset_utils.download("https://example.invalid/a.npz", sha256="abc")


@pytest.mark.parametrize(
    "handle, package",
    [("hf://someone/vit", "huggingface_hub"), ("kaggle://a/b/keras/c", "kagglehub")],
)
def test_hub_handles_name_the_missing_package(handle, package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(ImportError, match=f"pip install {package}"):
        ViTClassifier.from_preset(handle)


# ------------------------------------------------------ from a training run


def test_preprocessor_from_big_vision_eval_pp_strings():
    from keras_scalevit.models.preset_utils import preprocessor_from_pp

    pre = preprocessor_from_pp(
        "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)"
        "|onehot(1000, key='label', key_result='labels')|keep('image', 'labels')",
        224,
    )
    assert pre.pp_string == (
        "resize_small(256)|central_crop(224)|value_range(-1.0, 1.0)"
    )
    assert preprocessor_from_pp(
        "decode|resize(32)|value_range(0, 1)", 32
    ).pp_string == ("resize(32)|value_range(0.0, 1.0)")
    for bad in ("decode|inception_crop(224)|value_range(-1, 1)", "decode|resize(16)"):
        with pytest.raises(ValueError, match="pp_string"):
            preprocessor_from_pp(bad, 224 if "inception" in bad else 32)


def test_save_trained_preset_from_the_digits_config(tmp_path):
    from keras_scalevit.configs import digits
    from keras_scalevit.models.preset_utils import save_trained_preset

    model = ViTClassifier.from_preset("vit_digits")
    model.preprocessor = None
    out = save_trained_preset(
        model, digits.get_config(), tmp_path / "preset", metadata={"acc": 0.5}
    )
    pre = json.load(open(os.path.join(out, "preprocessor.json")))["config"]
    assert pre["class_names"] == [str(i) for i in range(10)]
    assert pre["activation"] == "softmax"  # the config's softmax_xent
    assert json.load(open(os.path.join(out, "metadata.json")))["acc"] == 0.5
    images, _ = _digits_images(8)
    np.testing.assert_array_equal(
        ViTClassifier.from_preset(out).predict(images, verbose=0),
        ViTClassifier.from_preset("vit_digits").predict(images, verbose=0),
    )
