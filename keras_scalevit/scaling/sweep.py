r"""A toy scaling sweep: the paper's Figure 2 on the embedded digits, in CPU minutes.

``python -m keras_scalevit.scaling.sweep --workdir DIR`` trains a grid of tiny ViTs
(model sizes × training lengths) with the paper's recipe as the digits config
holds it (`keras_scalevit.configs.digits`: big_vision's Adafactor with bfloat16
momentum, rsqrt schedule with warmup and linear cooldown, MAP head, zero-init
head, head weight decay), each run through the library's public training entry
point `keras_scalevit.train.main` with the run's overrides. Each run records in
``DIR/runs.jsonl``: the test error (1 - prec@1 on the 359 held-out digits), the
10-shot linear error on the pre-logits, its forward FLOPs per image and its
training compute (`train_flops`: 3 × forward × examples seen, the paper's
counting without the head). Then it fits ``E = a·(C + d)^(-b) + c`` per size
and on the frontier (`fit_frontier`), writes ``DIR/fits.json``,
``DIR/scaling.png`` (test error) and ``DIR/scaling_fewshot.png``.

Resumable: a run already in ``runs.jsonl`` is skipped (its own workdir under
``DIR/runs/<name>`` is left as is); a run killed midway starts over.
``--grid quick`` trains 2 short runs (the plumbing test).
"""

import argparse
import json
import math
import os
import sys
import time

from keras_scalevit.scaling.fit import fit_frontier, fit_saturating_power_law
from keras_scalevit.scaling.flops import flops_per_image, train_flops
from keras_scalevit.scaling.plot import plot_scaling

# name -> ViT shape (patch 2 on the 8x8 digits: 16 tokens).
SIZES = {
    "w16d1": dict(width=16, depth=1, num_heads=2, mlp_dim=64),
    "w32d1": dict(width=32, depth=1, num_heads=2, mlp_dim=128),
    "w64d2": dict(width=64, depth=2, num_heads=4, mlp_dim=256),
    "w128d4": dict(width=128, depth=4, num_heads=4, mlp_dim=512),
}
# From 100 steps (~4 epochs; shorter runs sit at chance level, a plateau the law
# does not describe) to 1600, by factors of ~√2: 9 points per size, 5 degrees of
# freedom for the 4 coefficients of each size's law.
STEPS = (100, 141, 200, 283, 400, 566, 800, 1131, 1600)
GRIDS = {
    "full": [(s, n) for s in SIZES for n in STEPS],
    "quick": [("w32d1", 10), ("w32d1", 20)],
}
FEWSHOT_SHOTS = 10
RUNS_NAME = "runs.jsonl"


def run_name(size, steps):
    """The run's name in ``runs.jsonl`` and its workdir, e.g. ``"w64d2_s400"``."""
    return f"{size}_s{steps}"


def run_config(size, steps, data_dir, seed=0):
    """The digits config overridden for one run of the grid."""
    from keras_scalevit.configs import digits

    config = digits.get_config()
    config.seed = seed
    config.input.data.data_dir = data_dir
    config.total_steps = steps
    config.ckpt_steps = 0
    config.verbose = 0
    config.log_training_steps = max(1, steps // 4)
    config.model.update(SIZES[size])
    config.evals.val.log_steps = steps
    config.evals.fewshot.shots = (FEWSHOT_SHOTS,)
    return config


def read_runs(path):
    """The finished runs recorded in a ``runs.jsonl`` (empty list if absent)."""
    runs = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    runs.append(json.loads(line))
    return runs


def _flops(config):
    m = config.model
    kw = dict(width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim)
    return flops_per_image(m.variant, config.image_size, pool_type=m.pool_type, **kw)


def train_one(size, steps, workdir, data_dir):
    """Trains one run with `keras_scalevit.train.main`; returns its record."""
    import keras

    from keras_scalevit import train

    config = run_config(size, steps, data_dir)
    keras.backend.clear_session()
    t0 = time.time()
    final = train.main(config, workdir)
    wall = time.time() - t0
    fpi = _flops(config)
    batch = int(config.input.batch_size)
    fewshot = final.get(f"fewshot/digits_{FEWSHOT_SHOTS}shot", math.nan)
    return dict(
        name=run_name(size, steps),
        size=size,
        steps=steps,
        batch_size=batch,
        examples_seen=steps * batch,
        **SIZES[size],
        flops_per_image=fpi,
        compute=train_flops(
            config.model.variant,
            config.image_size,
            steps * batch,
            pool_type=config.model.pool_type,
            **{k: config.model[k] for k in SIZES[size]},
        ),
        error=1.0 - float(final["val_prec@1"]),
        fewshot_error=1.0 - float(fewshot),
        wall_s=round(wall, 2),
        backend=keras.backend.backend(),
    )


def fit_runs(runs, error_key="error"):
    """Per-size fits (sizes with >= 3 runs) and the frontier fit, as a dict.

    Runs with a zero or undefined error are left out (the law is fitted in log
    space).
    """
    usable = [
        r for r in runs if isinstance(r.get(error_key), float) and r[error_key] > 0
    ]
    fits = {}
    for size in dict.fromkeys(r["size"] for r in usable):
        pts = [r for r in usable if r["size"] == size]
        if len(pts) >= 3:
            fits[size] = fit_saturating_power_law(
                [r["compute"] for r in pts], [r[error_key] for r in pts]
            )
    if len(usable) >= 3:
        try:
            fits["frontier"] = fit_frontier(usable, error_key=error_key)
        except ValueError:  # fewer than 3 envelope points
            pass
    return fits


def main(argv=None):
    """Command line: trains the missing runs, then fits and plots all of them."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_scalevit.scaling.sweep",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--workdir", required=True, help="Output directory.")
    parser.add_argument(
        "--grid", choices=sorted(GRIDS), default="full", help="Which grid to run."
    )
    args = parser.parse_args(argv)
    workdir = args.workdir
    os.makedirs(workdir, exist_ok=True)
    runs_path = os.path.join(workdir, RUNS_NAME)
    data_dir = os.path.join(workdir, "tfds")
    grid = GRIDS[args.grid]
    done = {r["name"] for r in read_runs(runs_path)}
    t_start = time.time()
    for i, (size, steps) in enumerate(grid, 1):
        name = run_name(size, steps)
        prefix = f"[{i}/{len(grid)}] {name}"
        if name in done:
            print(f"{prefix}: done before, skipped.", flush=True)
            continue
        record = train_one(size, steps, os.path.join(workdir, "runs", name), data_dir)
        with open(runs_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"{prefix}: test error {record['error']:.4f}, {FEWSHOT_SHOTS}-shot error "
            f"{record['fewshot_error']:.4f}, {record['compute']:.3g} FLOPs, "
            f"{record['wall_s']:.1f} s (total {time.time() - t_start:.0f} s)",
            flush=True,
        )
    runs = [r for r in read_runs(runs_path) if (r["size"], r["steps"]) in grid]
    summary = {}
    for key, png, label in (
        ("error", "scaling.png", "Test error (359 digits)"),
        ("fewshot_error", "scaling_fewshot.png", f"{FEWSHOT_SHOTS}-shot error"),
    ):
        fits = fit_runs(runs, key)
        summary[key] = {k: v.to_dict() for k, v in fits.items()}
        plot_scaling(
            runs,
            fits,
            os.path.join(workdir, png),
            error_key=key,
            ylabel=label,
            title="Toy scaling sweep on the digits",
        )
        for k, v in fits.items():
            print(f"{key} fit [{k}]: {v}", flush=True)
    with open(os.path.join(workdir, "fits.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"{len(runs)} runs; wrote {runs_path}, fits.json, scaling.png in "
        f"{time.time() - t_start:.0f} s.",
        flush=True,
    )
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
