"""Shared test helpers: fixture loading and backend facts.

The suite runs once per Keras backend (``KERAS_BACKEND=jax|tensorflow|torch``);
backend-specific expectations read ``BACKEND`` from here.
"""

import ast
import importlib.util
import inspect
import json
import os
import pathlib
import re
import textwrap

import keras
import numpy as np
import pytest

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
_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])


def load_script(*parts):
    """A script of the repository (``benchmarks/``, ``tools/``: not packages) as a module."""
    path = os.path.join(_REPO_ROOT, *parts)
    name = os.path.splitext(parts[-1])[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_peers():
    """``benchmarks/peers.py`` as a module."""
    return load_script("benchmarks", "peers.py")


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


def jax_worker_env(devices=8):
    """The environment of a JAX subprocess with ``devices`` CPU devices.

    The repository on ``PYTHONPATH`` (the subprocess imports this checkout).
    """
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        XLA_FLAGS=(
            env.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={devices}"
        ),
        PYTHONPATH=os.pathsep.join([_REPO_ROOT, env.get("PYTHONPATH", "")]),
        CUDA_VISIBLE_DEVICES="",
        JAX_PLATFORMS="cpu",
    )
    return env


def run_jax_worker(worker, out_dir, *, devices=8, timeout=600):
    """Runs ``python worker out_dir`` on the JAX backend with ``devices`` CPU devices.

    A subprocess, since JAX fixes its device count when it is imported. Fails the
    test with the worker's stderr tail if it does not exit cleanly.
    """
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(worker), str(out_dir)],
        env=jax_worker_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# ---------------------------------------------------------------- kill -9 and resume
# A config module for the training subprocesses: digits with a tiny model.
TINY_CONFIG = """
from keras_scalevit.configs import digits


def get_config(arg=None):
    c = digits.get_config()
    c.input.data.data_dir = {data_dir!r}
    c.model.width = 32
    c.model.depth = 1
    c.model.num_heads = 2
    c.model.mlp_dim = 64
    c.input.batch_size = 32
    c.total_steps = {total_steps}
    c.ckpt_steps = 10
    c.log_training_steps = 1
    c.verbose = 0
    c.evals.val.log_steps = 20
    c.evals.fewshot = {{}}
{extra}
    return c
"""


def write_tiny_config(path, data_dir, total_steps=7, extra=()):
    """Writes `TINY_CONFIG` to ``path``; ``extra``: more lines of ``get_config``."""
    body = "".join(f"    {line}\n" for line in extra).rstrip("\n")
    path = pathlib.Path(path)
    path.write_text(
        TINY_CONFIG.format(data_dir=str(data_dir), total_steps=total_steps, extra=body)
    )
    return path


def train_command(config_path, workdir, total_steps, *flags):
    """``python -m keras_scalevit.train`` with a config file, a workdir and flags."""
    import sys

    return [
        sys.executable,
        "-m",
        "keras_scalevit.train",
        f"--config={config_path}",
        f"--workdir={workdir}",
        f"--config.total_steps={total_steps}",
        *flags,
    ]


def _last_step(metrics_path):
    try:
        with open(metrics_path) as f:
            steps = [json.loads(line).get("step", 0) for line in f if line.strip()]
        return max(steps, default=0)
    except (OSError, json.JSONDecodeError):
        return 0


def _uncommitted_saves(workdir):
    """The Orbax step folders being written (``checkpoint/<step>.orbax-checkpoint-tmp*``)."""
    try:
        names = os.listdir(os.path.join(workdir, "checkpoint"))
    except OSError:
        return []
    return [n for n in names if ".orbax-checkpoint-tmp" in n]


def sigkill_at_random_step(command, env, workdir, *, kill_between, during_save=False):
    """Runs ``command`` (a training run) and SIGKILLs it at a random step.

    The step is drawn from ``kill_between`` (low, high) with the seed
    ``$SCALEVIT_KILL_SEED`` (printed; a new one each run otherwise) and read from
    ``workdir/metrics.jsonl`` (the run must log every step). With
    ``during_save`` the kill waits, from that step on, for an Orbax save in
    flight (an uncommitted ``checkpoint/<step>.orbax-checkpoint-tmp*`` folder)
    and lands while it is written. Rerunning the same command is the caller's.

    Returns a dict: ``seed``, ``kill_at``, ``killed_at`` (the last logged step at
    the kill) and ``uncommitted`` (the uncommitted save folders the kill left).
    """
    import signal
    import subprocess
    import time

    seed = int(os.environ.get("SCALEVIT_KILL_SEED", time.time_ns() % 2**31))
    kill_at = int(np.random.default_rng(seed).integers(*kill_between))
    print(f"SCALEVIT_KILL_SEED={seed}: kill at step {kill_at}", flush=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 600
        reached = False
        while proc.poll() is None:
            assert time.time() < deadline, "the training run did not progress"
            reached = reached or _last_step(metrics) >= kill_at
            if reached and (not during_save or _uncommitted_saves(workdir)):
                os.kill(proc.pid, signal.SIGKILL)
                break
            # Saves of the tiny model take milliseconds: look often for one.
            time.sleep(0.0005 if reached else 0.005)
        proc.wait()
    finally:
        if proc.poll() is None:  # the test stops it, whatever happened
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill"
    result = dict(
        seed=seed,
        kill_at=kill_at,
        killed_at=_last_step(metrics),
        uncommitted=sorted(_uncommitted_saves(workdir)),
    )
    print(f"killed: {result}", flush=True)
    return result
