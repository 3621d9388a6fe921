"""The paper's scaling figure: error against compute, log-log, one colour per size."""

import numpy as np


def plot_scaling(
    runs,
    fits,
    path,
    *,
    x_key="compute",
    error_key="error",
    group_key="size",
    frontier_key="frontier",
    title=None,
    xlabel="Training compute (FLOPs)",
    ylabel="Error",
):
    """Draws runs and fitted laws as *Scaling Vision Transformers* Figure 2 does.

    Log-log axes, error against compute; each model size (``run[group_key]``) gets
    one colour for its points and its fitted law (solid, drawn over the size's
    own compute range); the frontier law (``fits[frontier_key]``) is black and
    dashed over the whole range; the error axis spans the runs' errors. Written with Matplotlib's Agg
    backend (no display needed).

    Args:
        runs: iterable of dicts with ``x_key``, ``error_key`` and ``group_key``.
        fits: dict ``{group: PowerLawFit}``, optionally with ``frontier_key``.
        path: str, the PNG file to write.
        x_key, error_key, group_key: str, keys of the run dicts.
        frontier_key: str, the key of the frontier fit in ``fits``.
        title, xlabel, ylabel: str or None.

    Returns:
        ``path``.

    Example:
    >>> import os, tempfile
    >>> from keras_scalevit.scaling import PowerLawFit, plot_scaling
    >>> runs = [dict(size="S", compute=c, error=0.2 * c ** -0.3 + 0.01)
    ...         for c in (1.0, 10.0, 100.0)]
    >>> fits = {"frontier": PowerLawFit(a=0.2, b=0.3, c=0.01, d=0.0)}
    >>> path = plot_scaling(runs, fits, os.path.join(tempfile.mkdtemp(), "s.png"))
    >>> os.path.getsize(path) > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    runs = list(runs)
    groups = []
    for run in runs:
        if run[group_key] not in groups:
            groups.append(run[group_key])
    for key in fits:
        if key != frontier_key and key not in groups:
            groups.append(key)
    cmap = plt.get_cmap("viridis")
    colours = {g: cmap(i / max(1, len(groups) - 1) * 0.9) for i, g in enumerate(groups)}
    xs = [float(r[x_key]) for r in runs] + [
        x for f in fits.values() for x in getattr(f, "x", ())
    ]
    lo, hi = (min(xs), max(xs)) if xs else (1.0, 10.0)
    grid = np.logspace(np.log10(lo) - 0.1, np.log10(hi) + 0.3, 200)

    fig, ax = plt.subplots(figsize=(6.0, 4.5), dpi=110)
    for g in groups:
        pts = [r for r in runs if r[group_key] == g]
        if pts:
            ax.scatter(
                [r[x_key] for r in pts],
                [r[error_key] for r in pts],
                color=colours[g],
                s=22,
                zorder=3,
                label=str(g),
            )
        if g in fits:
            # Over the size's own points (a little beyond): a per-size law is
            # not a forecast far from the runs it was fitted to.
            own = [float(r[x_key]) for r in pts] or list(getattr(fits[g], "x", ()))
            span = grid
            if own:
                span = np.logspace(np.log10(min(own)) - 0.15, np.log10(max(own)) + 0.15)
            ax.plot(span, fits[g].predict(span), color=colours[g], lw=1.2, alpha=0.8)
    if frontier_key in fits:
        f = fits[frontier_key]
        ax.plot(grid, f.predict(grid), "k--", lw=1.5, label=f"frontier: {f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    errors = [float(r[error_key]) for r in runs if float(r[error_key]) > 0]
    if errors:  # the runs decide the range, not an extrapolated law
        ax.set_ylim(min(errors) / 2, max(errors) * 2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
