"""Saving and loading: ``.keras`` in safe mode, layer configs, across backends."""

import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import BACKEND, rel_err

from keras_scalevit.models import (
    ClassToken,
    EncoderBlock,
    LayerNorm,
    MAPHead,
    MlpBlock,
    MultiHeadDotProductAttention,
    PatchEmbedding,
    PositionEmbedding,
    ViTBackbone,
    ViTClassifier,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OTHER_BACKEND = {"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}[BACKEND]


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _images(shape=(2, 16, 16, 3), seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pool_type="map", rep_size=16),
        dict(pool_type="tok", posemb="learn"),
        dict(pool_type="gap", posemb="sincos2d", rep_size=True),
        dict(pool_type="none", posemb="sincos2d"),
    ],
    ids=["map", "tok", "gap_sincos", "none"],
)
def test_keras_file_round_trip_safe_mode(tmp_path, kwargs):
    keras.utils.set_random_seed(1)
    model = ViTClassifier.from_variant(
        "mu/8",
        num_classes=3,
        image_size=(16, 24),
        head_zeroinit=False,
        head_bias_init=0.5,
        **kwargs,
    )
    images = _images((2, 16, 24, 3))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is ViTClassifier
    assert loaded.get_config() == model.get_config()
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    assert np.array_equal(_np(loaded(images)), _np(model(images)))
    rep = _np(loaded.representation_model(images))
    assert np.array_equal(rep, _np(model.representation_model(images)))


def test_backbone_keras_file_round_trip(tmp_path):
    keras.utils.set_random_seed(2)
    bb = ViTBackbone.from_variant("mu/8", image_size=16, class_token=True)
    path = tmp_path / "backbone.keras"
    bb.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is ViTBackbone
    assert loaded.get_config() == bb.get_config()
    images = _images()
    assert np.array_equal(_np(loaded(images)), _np(bb(images)))


def test_mixed_precision_policy_survives_saving(tmp_path):
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=3, image_size=16, dtype="mixed_bfloat16"
    )
    path = tmp_path / "mixed.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.backbone.get_config()["dtype"]["config"]["name"] == "mixed_bfloat16"
    assert loaded.backbone.blocks[0].compute_dtype == "bfloat16"
    assert loaded.backbone.blocks[0].variable_dtype == "float32"
    assert loaded.head.dtype_policy.name == "float32"
    images = _images()
    assert np.array_equal(_np(loaded(images)), _np(model(images)))


# --- get_config / from_config of every layer ------------------------------------

LAYER_CASES = [
    (LayerNorm, dict(epsilon=1e-5), (2, 5, 8)),
    (MlpBlock, dict(mlp_dim=16, dropout=0.1), (2, 5, 8)),
    (MultiHeadDotProductAttention, dict(num_heads=2), (2, 5, 8)),
    (EncoderBlock, dict(num_heads=2, mlp_dim=16, dropout=0.1), (2, 5, 8)),
    (EncoderBlock, dict(num_heads=2, mlp_dim=16, remat=True), (2, 5, 8)),
    (PatchEmbedding, dict(width=8, patch_size=(4, 2)), (2, 8, 8, 3)),
    (PositionEmbedding, dict(grid_size=(2, 3), posemb="learn"), (2, 6, 8)),
    (PositionEmbedding, dict(grid_size=(2, 3), posemb="sincos2d"), (2, 6, 8)),
    (ClassToken, dict(), (2, 6, 8)),
    (MAPHead, dict(num_heads=2, mlp_dim=16), (2, 6, 8)),
]


@pytest.mark.parametrize(
    "cls,kwargs,shape",
    LAYER_CASES,
    ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(LAYER_CASES)],
)
def test_layer_config_round_trip(cls, kwargs, shape):
    layer = cls(name="layer_under_test", **kwargs)
    x = _images(shape, seed=3)
    y = _np(layer(x))
    config = layer.get_config()
    for k, v in kwargs.items():
        assert config[k] == v or tuple(config[k]) == tuple(v), k
    clone = cls.from_config(config)
    assert clone.get_config() == config
    clone.build(x.shape)
    assert [w.shape for w in clone.weights] == [w.shape for w in layer.weights]
    clone.set_weights(layer.get_weights())
    assert np.array_equal(_np(clone(x)), y)
    # through the registered name as well (what safe-mode loading uses)
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(again) is cls and again.get_config() == config


@pytest.mark.parametrize("cls", [ViTBackbone, ViTClassifier])
def test_model_config_round_trip(cls):
    if cls is ViTBackbone:
        model = ViTBackbone.from_variant(
            "mu/8", image_size=(16, 24), posemb="sincos2d", dropout=0.1, remat=True
        )
    else:
        model = ViTClassifier.from_variant(
            "mu/8", num_classes=4, image_size=16, pool_type="map", rep_size=8
        )
    config = model.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config
    assert [(v.path, v.shape) for v in clone.weights] == [
        (v.path, v.shape) for v in model.weights
    ]


# --- across backends ---------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    from keras_scalevit.models import ViTClassifier

    out = sys.argv[1]
    keras.utils.set_random_seed(7)
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=32, pool_type="map", rep_size=16,
        head_zeroinit=False,
    )
    images = np.random.default_rng(11).uniform(-1, 1, (3, 32, 32, 3)).astype("float32")
    model.save(out + "/model.keras")
    model.save_weights(out + "/model.weights.h5")
    np.save(out + "/logits.npy", keras.ops.convert_to_numpy(model(images)))
    np.save(out + "/images.npy", images)
    print(keras.backend.backend())
    """
)


@pytest.fixture(scope="module")
def other_backend_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("cross_backend")
    env = {**os.environ, "KERAS_BACKEND": OTHER_BACKEND}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", _WRITER, str(out)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == OTHER_BACKEND
    return out


# Different backends run different float32 kernels (conv, matmul, softmax order):
# the logits agree to float32 round-off through 1 block + MAP head + 2 Dense layers;
# 1e-5 relative to the largest logit leaves >10x margin over the ~1e-7-1e-6 seen.
CROSS_BACKEND_TOL = 1e-5


def test_keras_file_from_other_backend(other_backend_files):
    d = other_backend_files
    model = keras.saving.load_model(d / "model.keras", safe_mode=True)
    logits = _np(model(np.load(d / "images.npy")))
    assert rel_err(logits, np.load(d / "logits.npy")) <= CROSS_BACKEND_TOL


def test_weights_file_from_other_backend(other_backend_files):
    d = other_backend_files
    model = ViTClassifier.from_variant(
        "mu/8", num_classes=5, image_size=32, pool_type="map", rep_size=16
    )
    model.load_weights(d / "model.weights.h5")
    logits = _np(model(np.load(d / "images.npy")))
    ref = np.load(d / "logits.npy")
    assert np.abs(ref).max() > 0.1  # a non-trivial (non-zero) head
    assert rel_err(logits, ref) <= CROSS_BACKEND_TOL
