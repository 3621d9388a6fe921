"""Position-embedding tables and resampling (NumPy, computed once, outside any step)."""

import numpy as np

from keras_scalevit.utils.validation import check_positive_float, check_positive_int


def posemb_sincos2d(h, w, width, temperature=10_000.0, dtype="float32"):
    """big_vision's 2-D sin-cos position embedding, shape ``(1, h·w, width)``.

    With ``q = width / 4`` frequencies ``ω_k = temperature^(−k/(q−1))``, token
    ``(i, j)`` (row i, column j, row-major) gets ``[sin(jω), cos(jω), sin(iω), cos(iω)]``.

    Args:
        h: int. Grid rows.
        w: int. Grid columns.
        width: int. Embedding width; must be divisible by 4.
        temperature: float. The base ``T`` of the frequencies.
        dtype: output dtype.

    Returns:
        A NumPy array of shape ``(1, h·w, width)``.

    Example:
    >>> from keras_scalevit.models import posemb_sincos2d
    >>> posemb_sincos2d(2, 3, 8).shape
    (1, 6, 8)
    """
    h = check_positive_int("h", h)
    w = check_positive_int("w", w)
    width = check_positive_int("width", width)
    temperature = check_positive_float("temperature", temperature)
    if width % 4:
        raise ValueError(
            "`width` must be divisible by 4 for posemb='sincos2d' (sin and cos of "
            f"x and y), got width={width}."
        )
    q = width // 4
    # q - 1 (not q) in the exponent: the last frequency is exactly 1/T (spec §1.4).
    omega = 1.0 / temperature ** (np.arange(q, dtype=np.float64) / max(q - 1, 1))
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out_x = x.reshape(-1, 1) * omega[None]
    out_y = y.reshape(-1, 1) * omega[None]
    pe = np.concatenate(
        [np.sin(out_x), np.cos(out_x), np.sin(out_y), np.cos(out_y)], axis=1
    )
    return pe[None].astype(dtype)


def _resize_axis_align_corners(a, new_size, axis):
    old_size = a.shape[axis]
    if new_size == old_size:
        return a
    if old_size == 1 or new_size == 1:
        idx = np.zeros(new_size, dtype=np.int64)
        return np.take(a, idx, axis=axis)
    coords = np.arange(new_size, dtype=np.float64) * ((old_size - 1) / (new_size - 1))
    lo = np.clip(np.floor(coords).astype(np.int64), 0, old_size - 2)
    frac = coords - lo
    shape = [1] * a.ndim
    shape[axis] = new_size
    frac = frac.reshape(shape)
    return (
        np.take(a, lo, axis=axis) * (1.0 - frac) + np.take(a, lo + 1, axis=axis) * frac
    )


def resample_posemb(posemb, new_grid):
    """Resamples a learned ``(1, g·g, D)`` posemb to a ``new_grid × new_grid`` grid.

    big_vision's `resample_posemb`: square grids, linear interpolation with
    corner-aligned sampling (output index ``o`` reads input ``o·(g−1)/(g'−1)``, i.e.
    SciPy's ``zoom(order=1)``), computed in float64 and returned in the input dtype.
    Used when fine-tuning at a higher resolution.

    Args:
        posemb: array of shape ``(1, g·g, D)``.
        new_grid: int, or ``(h, w)`` with ``h == w``.

    Returns:
        A NumPy array of shape ``(1, new_grid², D)``.

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.models import resample_posemb
    >>> resample_posemb(np.zeros((1, 49, 16), "float32"), 14).shape
    (1, 196, 16)
    """
    posemb = np.asarray(posemb)
    if isinstance(new_grid, (tuple, list)):
        if len(new_grid) != 2 or new_grid[0] != new_grid[1]:
            raise ValueError(
                "`new_grid` must be square: resampling a learned position embedding "
                "needs square grids (as big_vision's resample_posemb), got "
                f"{tuple(new_grid)}."
            )
        new_grid = new_grid[0]
    new_grid = check_positive_int("new_grid", new_grid)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(
            f"`posemb` must have shape (1, tokens, width), got shape {posemb.shape}."
        )
    if posemb.dtype.kind != "f" and posemb.dtype.name != "bfloat16":
        raise TypeError(
            f"`posemb` must be a floating-point array, got dtype {posemb.dtype}."
        )
    n = posemb.shape[1]
    old_grid = int(round(np.sqrt(n)))
    if old_grid * old_grid != n:
        raise ValueError(
            f"`posemb` must hold a square grid of tokens to be resampled, got {n} "
            "tokens."
        )
    if old_grid == new_grid:
        return posemb
    grid = posemb[0].reshape(old_grid, old_grid, -1).astype(np.float64)
    grid = _resize_axis_align_corners(grid, new_grid, axis=0)
    grid = _resize_axis_align_corners(grid, new_grid, axis=1)
    return grid.reshape(1, new_grid * new_grid, -1).astype(posemb.dtype)
