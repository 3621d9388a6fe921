"""The Colab notebooks in ``colabs/``: each runs top to bottom, and is stored clean.

Executing them (smoke mode, ``KERAS_SCALEVIT_SMOKE=1``: few steps, small data, no
download) needs ``nbclient``, ``nbformat`` and ``ipykernel`` (the ``tests`` and
``notebooks`` extras); the kernel is this interpreter (``sys.executable``),
through a kernelspec written to a temporary directory. The notebooks choose the
JAX backend themselves (``switch_backends`` starts TensorFlow and PyTorch in
subprocesses), so they are executed once, in the JAX run of the suite.
"""

import importlib.util
import json
import os
import re
import time

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, "colabs")
NOTEBOOKS = (
    "quickstart",
    "finetune_tpu",
    "switch_backends",
    "fewshot",
    "scaling_laws",
)
BADGE_URL = (
    "https://colab.research.google.com/github/keras-scalevit/keras-scalevit/blob/"
    "main/colabs/{}.ipynb"
)
MAX_BYTES = 1_000_000


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "colabs_tool", os.path.join(ROOT, "tools", "colabs.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def _path(name):
    return os.path.join(COLABS, f"{name}.ipynb")


def test_every_notebook_is_listed():
    stored = sorted(
        f[: -len(".ipynb")] for f in os.listdir(COLABS) if f.endswith(".ipynb")
    )
    assert stored == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_is_normalised_small_and_colab_ready(name):
    path = _path(name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    nb = json.loads(text)
    assert text == tool.dumps(tool.normalize(nb)), (
        f"{path} is not normalised: run `python tools/colabs.py {path}`."
    )
    assert os.path.getsize(path) < MAX_BYTES, f"{path} is over 1 MB."
    cells = nb["cells"]
    assert BADGE_URL.format(name) in cells[0]["source"], "missing Open-in-Colab badge"
    install = cells[1]
    assert install["cell_type"] == "code"
    assert "import google.colab" in install["source"]
    assert "pip install" in install["source"]
    # Stored with the outputs of a real (non-smoke) run, without errors.
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert not any("Smoke mode" in o.get("text", "") for o in outputs)
    rich = ("image/png", "text/markdown")  # plots; switch_backends shows tables
    assert any(k in o.get("data", {}) for o in outputs for k in rich), (
        "no stored plot or table"
    )
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell["source"].strip(), "empty code cell"


def test_normalize_removes_noise():
    nb = {
        "metadata": {
            "kernelspec": {"name": "python3"},
            "widgets": {"state": {}},
            "language_info": {"version": "3.11"},
        },
        "nbformat": 4,
        "nbformat_minor": 4,
        "cells": [
            {
                "cell_type": "code",
                "id": "random-id",
                "metadata": {"scrolled": True},
                "execution_count": 7,
                "source": ["print(1)\n", "x"],
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": "a\rb\n"},
                    # Keras' progress bar: erase with backspaces, then \r,
                    # arriving as separate outputs.
                    {
                        "output_type": "stream",
                        "name": "stdout",
                        "text": "1/2 \x1b[1m━\x1b[0m",
                    },
                    {
                        "output_type": "stream",
                        "name": "stdout",
                        "text": ["\b\b\b\b\b\r", "2/2 done\n"],
                    },
                    {
                        "output_type": "execute_result",
                        "execution_count": 7,
                        "metadata": {"foo": 1},
                        "data": {"text/plain": ["1"]},
                    },
                ],
            }
        ],
    }
    out = tool.normalize(nb)
    assert set(out["metadata"]) == {"kernelspec"}
    cell = out["cells"][0]
    assert cell["id"] == "cell-00" and cell["metadata"] == {}
    assert cell["execution_count"] is None and cell["source"] == "print(1)\nx"
    assert cell["outputs"][0] == {
        "output_type": "stream",
        "name": "stdout",
        "text": "b\n2/2 done\n",
    }
    assert cell["outputs"][1]["execution_count"] is None
    assert cell["outputs"][1]["metadata"] == {}
    assert tool.normalize(out) == out


def _requirements():
    missing = [
        m
        for m in ("nbclient", "nbformat", "ipykernel")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(
            f"Executing the notebooks needs {', '.join(missing)} "
            '(pip install -e ".[tests]").'
        )


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="The notebooks run on JAX (switch_backends.ipynb starts the other "
    "backends itself); executed once, in the JAX run of the suite.",
)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path):
    _requirements()
    from nbclient.exceptions import CellExecutionError

    env = {
        "KERAS_SCALEVIT_SMOKE": "1",
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [ROOT, os.environ.get("PYTHONPATH")])
        ),
        # Never wait on a network: downloads fail fast if one is attempted.
        "KERAS_SCALEVIT_DOWNLOAD_TIMEOUT": "5",
        "KERAS_HOME": str(tmp_path / "keras_home"),
        "TFDS_DATA_DIR": str(tmp_path / "tensorflow_datasets"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    t0 = time.time()
    try:
        nb = tool.execute(_path(name), cwd=str(tmp_path), timeout=600, env=env)
    except CellExecutionError as e:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        pytest.fail(f"{name}.ipynb failed in smoke mode:\n{message}", pytrace=False)
    errors = [
        o
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if o["output_type"] == "error"
    ]
    assert not errors, errors
    print(f"{name}.ipynb: {time.time() - t0:.0f} s")
