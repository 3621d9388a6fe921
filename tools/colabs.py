"""Run and normalise the notebooks in ``colabs/``.

``python tools/colabs.py --execute colabs/*.ipynb`` runs each notebook top to
bottom in a fresh kernel of this Python (``sys.executable``) and stores it with
its outputs, normalised; without ``--execute`` it only normalises. Set
``KERAS_SCALEVIT_SMOKE=1`` for the quick CI mode (then nothing is written unless
``--write`` is given). ``tests/test_colabs.py`` uses the same functions.

Normalised means: no execution counts, deterministic cell ids, no cell or output
metadata except images' sizes, no widget state, notebook metadata reduced to the
kernelspec and Colab's entries, and progress bars (``\\r`` rewrites) collapsed to
their final state.
"""

import argparse
import copy
import json
import os
import re
import sys
import tempfile
import time

NOTEBOOK_METADATA_KEYS = ("kernelspec", "colab", "accelerator")
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
KERNEL_NAME = "keras-scalevit-colabs"
# Matches ANSI escape sequences (Keras' progress bar colours its output).
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _collapse_carriage_returns(text):
    """Keeps what a terminal would show: each line's text after its last ``\\r``."""
    # Keras' progress bar erases itself with backspaces, then a carriage return.
    lines = re.sub("\b+", "\r", text).split("\n")
    out = []
    for line in lines:
        parts = line.split("\r")
        kept = [p for p in parts if p]
        out.append(kept[-1] if kept else "")
    # Drop the lines a backspace-style progress bar leaves empty.
    return "\n".join(out)


def _text(value):
    return "".join(value) if isinstance(value, list) else value


def normalize(nb):
    """Returns a normalised deep copy of a notebook (an nbformat/JSON dict)."""
    nb = copy.deepcopy(nb)
    meta = nb.get("metadata", {})
    nb["metadata"] = {k: meta[k] for k in NOTEBOOK_METADATA_KEYS if k in meta}
    nb["metadata"]["kernelspec"] = dict(KERNELSPEC)
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    for i, cell in enumerate(nb.get("cells", [])):
        cell["id"] = f"cell-{i:02d}"
        cell["metadata"] = {}
        cell["source"] = _text(cell.get("source", ""))
        if not cell.get("attachments"):
            cell.pop("attachments", None)
        if cell["cell_type"] != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            continue
        cell["execution_count"] = None
        outputs = []
        for out in cell.get("outputs", []):
            out = dict(out)
            kind = out.get("output_type")
            if kind == "stream":
                # Merge first: a progress bar's erase-and-rewrite spans outputs.
                text = _ANSI.sub("", _text(out["text"]))
                last = outputs[-1] if outputs else {}
                if last.get("output_type") == "stream" and last["name"] == out["name"]:
                    last["text"] += text
                    continue
                out["text"] = text
            elif kind in ("display_data", "execute_result"):
                data = {
                    k: _text(v) if k.startswith("text/") else v
                    for k, v in out.get("data", {}).items()
                    if k != "application/vnd.jupyter.widget-view+json"
                }
                if not data:
                    continue
                out["data"] = data
                out["metadata"] = {}
                if kind == "execute_result":
                    out["execution_count"] = None
            elif kind == "error":
                out["traceback"] = [_ANSI.sub("", t) for t in out.get("traceback", [])]
            outputs.append(out)
        for out in outputs:
            if out.get("output_type") == "stream":
                text = _collapse_carriage_returns(out["text"])
                # Collapse blank runs left by collapsed progress bars.
                out["text"] = re.sub(r"\n{3,}", "\n\n", text)
        cell["outputs"] = outputs
    return nb


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dumps(nb):
    """The stored text of a notebook: sorted keys, one-space indent, final newline."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write(nb, path):
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(normalize(nb)))


def make_kernelspec(directory):
    """Writes a kernelspec running ``sys.executable``; returns its JUPYTER_PATH entry.

    Put the returned path first in ``$JUPYTER_PATH`` and use ``KERNEL_NAME``.
    """
    kernel_dir = os.path.join(directory, "kernels", KERNEL_NAME)
    os.makedirs(kernel_dir, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (keras-scalevit tests)",
        "language": "python",
    }
    with open(os.path.join(kernel_dir, "kernel.json"), "w") as f:
        json.dump(spec, f)
    return directory


def execute(path, *, cwd, timeout=600, env=None):
    """Runs a notebook in a fresh kernel of ``sys.executable``; returns it executed.

    ``env`` is merged into the kernel's environment. A failing cell raises
    ``nbclient.exceptions.CellExecutionError`` (its message holds the cell's
    source and the traceback).
    """
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as spec_dir:
        make_kernelspec(spec_dir)
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [spec_dir, old]))
        kernel_env = {**os.environ, **(env or {})}
        try:
            client = nbclient.NotebookClient(
                nb,
                timeout=timeout,
                kernel_name=KERNEL_NAME,
                resources={"metadata": {"path": cwd}},
                env=kernel_env,
            )
            client.execute(env=kernel_env)
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
    return json.loads(nbformat.writes(nb))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--execute", action="store_true", help="Run them first.")
    parser.add_argument(
        "--write", action="store_true", help="Store smoke-mode outputs too."
    )
    args = parser.parse_args(argv)
    smoke = os.environ.get("KERAS_SCALEVIT_SMOKE") == "1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [root, os.environ.get("PYTHONPATH")])
        )
    }
    for path in args.notebooks:
        if args.execute:
            t0 = time.time()
            with tempfile.TemporaryDirectory() as cwd:
                nb = execute(path, cwd=cwd, env=env)
            print(f"{path}: executed in {time.time() - t0:.0f} s", flush=True)
            if smoke and not args.write:
                continue
        else:
            nb = read(path)
        write(nb, path)
        print(f"{path}: {os.path.getsize(path) / 1024:.0f} KiB", flush=True)


if __name__ == "__main__":
    main()
