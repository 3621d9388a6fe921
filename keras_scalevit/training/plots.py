"""Training curves from ``metrics.jsonl``."""

import json

PLOT_NAME = "training_curves.png"


def plot_metrics(metrics_path, png_path):
    """Plots loss, prec@1 and learning rate from ``metrics.jsonl`` (Agg).

    Example:
    >>> import json, os, tempfile
    >>> from keras_scalevit.training import plot_metrics
    >>> workdir = tempfile.mkdtemp()
    >>> metrics = os.path.join(workdir, "metrics.jsonl")
    >>> with open(metrics, "w") as f:
    ...     for step in (1, 2, 3):
    ...         record = {"step": step, "loss": 1.0 / step, "prec@1": 0.3 * step,
    ...                   "lr": 0.01}
    ...         print(json.dumps(record), file=f)
    >>> plot_metrics(metrics, os.path.join(workdir, "curves.png"))
    >>> os.path.getsize(os.path.join(workdir, "curves.png")) > 0
    True
    """
    # A Figure with its own Agg canvas: no pyplot, so the caller's matplotlib
    # backend (a notebook's inline one) is left as it is.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = []
    with open(metrics_path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue

    def series(key):
        pts = [(r["step"], r[key]) for r in records if key in r and "step" in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = Figure(figsize=(15, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for key in ("loss", "val_loss"):
        axes[0].plot(*series(key), label=key, marker="." if "val" in key else None)
    axes[0].set_yscale("log")
    fewshot_keys = sorted({k for r in records for k in r if k.startswith("fewshot/")})
    for key in ("prec@1", "val_prec@1", *fewshot_keys):
        xs, ys = series(key)
        if xs:
            axes[1].plot(xs, ys, label=key, marker="." if key != "prec@1" else None)
    axes[2].plot(*series("lr"), label="lr")
    for ax, title in zip(axes, ("loss", "accuracy", "learning rate"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
