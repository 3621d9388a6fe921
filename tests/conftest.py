"""Shared test helpers: fixture loading and backend facts.

The suite runs once per Keras backend (``KERAS_BACKEND=jax|tensorflow|torch``);
backend-specific expectations read ``BACKEND`` from here.
"""

import ast
import inspect
import json
import os
import pathlib
import re
import textwrap

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


# ---------------------------------------------------------------- a user's clone
# `SCALEVIT_FIXTURE_TESTS_ONLY=1` (tests/run_all_backends.sh's last pass, run with
# SCALEVIT_FIXTURES pointing to a missing folder) keeps only the tests that reach
# the fixtures: the ones whose code, fixtures or helpers (followed through the
# test modules) name a fixture helper or BV_FIXTURES. They must all skip there.
_FIXTURE_WORDS = re.compile(
    r"\b(load_fixture|fixture_path|bv_manifest|BV_FIXTURES|FIXTURES_ROOT|"
    r"fixture_names|model_fixture_names|_require_fixtures)\b"
)
_TESTS_DIR = str(pathlib.Path(__file__).resolve().parent)


def _reaches_fixtures(func, seen):
    if not inspect.isfunction(func) or func in seen:
        return False
    seen.add(func)
    try:
        if not os.path.abspath(inspect.getsourcefile(func)).startswith(_TESTS_DIR):
            return False
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return False
    if _FIXTURE_WORDS.search(source):
        return True
    try:
        names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    except SyntaxError:
        return True  # cannot tell: keep the test
    return any(_reaches_fixtures(func.__globals__.get(n), seen) for n in names)


def _uses_fixtures(item):
    seen = set()
    func = getattr(item, "function", None)
    if func is not None and _reaches_fixtures(func, seen):
        return True
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        if any(_reaches_fixtures(d.func, seen) for d in defs):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SCALEVIT_FIXTURE_TESTS_ONLY") != "1":
        return
    keep = [item for item in items if _uses_fixtures(item)]
    drop = [item for item in items if item not in keep]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def run_jax_worker(worker, out_dir, *, devices=8, timeout=600):
    """Runs ``python worker out_dir`` on the JAX backend with ``devices`` CPU devices.

    A subprocess, since JAX fixes its device count when it is imported. Fails the
    test with the worker's stderr tail if it does not exit cleanly.
    """
    import subprocess
    import sys

    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        XLA_FLAGS=(
            env.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={devices}"
        ),
        PYTHONPATH=os.pathsep.join(
            [str(pathlib.Path(worker).resolve().parents[2]), env.get("PYTHONPATH", "")]
        ),
        CUDA_VISIBLE_DEVICES="",
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, str(worker), str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
