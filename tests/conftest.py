"""Shared test helpers: fixture loading and backend facts.

The suite runs once per Keras backend (``KERAS_BACKEND=jax|tensorflow|torch``);
backend-specific expectations read ``BACKEND`` from here.
"""

import json
import os
import pathlib

# TensorFlow's oneDNN kernels segfault intermittently inside tf.function
# training steps on this CPU build; the plain Eigen kernels are stable.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

# big_vision's numerical fixtures live beside the checkout (../shared/fixtures).
_DEFAULT_FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FIXTURES_ROOT = pathlib.Path(os.environ.get("SCALEVIT_FIXTURES", _DEFAULT_FIXTURES))
BV_FIXTURES = FIXTURES_ROOT / "big_vision"


def _require_fixtures():
    if not (BV_FIXTURES / "manifest.json").is_file():
        pytest.skip(
            f"big_vision fixtures not found at {BV_FIXTURES} (a user's clone has no "
            "../shared/fixtures; set SCALEVIT_FIXTURES to point at them)."
        )


@pytest.fixture(scope="session")
def bv_manifest():
    """The big_vision fixtures' manifest.json as a dict (skips if absent)."""
    _require_fixtures()
    with open(BV_FIXTURES / "manifest.json") as f:
        return json.load(f)


def fixture_path(relpath):
    """``shared/fixtures/big_vision/<relpath>`` as a path; skips if the folder is absent.

    Use this (never ``BV_FIXTURES / relpath``) where a test opens a fixture file
    itself, so that a user's clone without ``../shared`` skips instead of failing
    with FileNotFoundError.
    """
    _require_fixtures()
    return BV_FIXTURES / relpath


def load_fixture(relpath):
    """Loads ``shared/fixtures/big_vision/<relpath>`` without pickle, as a dict."""
    _require_fixtures()
    with np.load(BV_FIXTURES / relpath, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def fixture_names(subdir, suffix=".npz"):
    """Sorted fixture file names under a subfolder (empty list if absent).

    Used to parametrize tests; when the folder is absent the test still runs
    once via ``_require_fixtures`` and skips with a clear message.
    """
    d = BV_FIXTURES / subdir
    if not d.is_dir():
        return ["<fixtures absent>"]
    return sorted(p.name for p in d.glob(f"*{suffix}"))


def model_fixture_names(keep):
    """Sorted ``models/`` fixture names whose manifest entry passes ``keep(entry)``.

    Read at collection time to parametrize tests; a placeholder when the fixtures
    are absent (the test then skips via ``load_fixture``).
    """
    path = BV_FIXTURES / "manifest.json"
    if not path.is_file():
        return ["<fixtures absent>"]
    files = json.loads(path.read_text())["files"]
    return sorted(
        k.split("/", 1)[1]
        for k, v in files.items()
        if k.startswith("models/") and keep(v)
    )


def rel_err(actual, expected):
    """max|actual - expected| / max|expected| (the manifest's measure)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected))
    return float(np.max(np.abs(actual - expected)) / (scale if scale > 0 else 1.0))
