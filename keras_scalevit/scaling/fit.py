"""Saturating power laws ``E = a·(C + d)^(-b) + c``, as the paper fits them.

*Scaling Vision Transformers* (its Figures 1-2) fits error ``E`` against compute
``C`` with four parameters: ``a`` the scale, ``b`` the exponent, ``c`` the
irreducible error (the law saturates at ``c`` for infinite compute) and ``d`` a
compute offset (the curve flattens at small compute instead of diverging). The
frontier law is fitted to the lower envelope of all runs: for each compute, the
best error any run reached with at most that compute.

The fit minimises squared residuals of ``log E`` (every point weighs by its relative
error, as the points span decades) with bounded least squares from several starting
points, in units where the compute is of order one (``C / geometric mean``).
"""

import dataclasses
import itertools
import math
import numbers

import numpy as np

from keras_scalevit.utils.validation import check_float

PARAMETERS = ("a", "b", "c", "d")


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """A fitted ``E = a·(C + d)^(-b) + c`` with standard errors.

    Attributes:
        a, b, c, d: floats, the coefficients (``d`` in the units of the fitted x).
        a_err, b_err, c_err, d_err: floats, one-standard-error uncertainties from
            the linearised covariance of the log-space residuals (NaN when there
            are no more points than free parameters or the Jacobian is singular;
            0 for a fixed ``c``).
        x, error: tuples of the points that were fitted.
        rms_log_residual: float, root-mean-square of ``log E - log E_fit``.

    Example:
    >>> from keras_scalevit.scaling import PowerLawFit
    >>> law = PowerLawFit(a=0.5, b=0.4, c=0.05, d=1.0)
    >>> round(law.predict(99.0), 4)
    0.1292
    >>> str(law)
    'E = 0.5·(C + 1)^(-0.4) + 0.05'
    """

    a: float
    b: float
    c: float
    d: float
    a_err: float = math.nan
    b_err: float = math.nan
    c_err: float = math.nan
    d_err: float = math.nan
    x: tuple = ()
    error: tuple = ()
    rms_log_residual: float = math.nan

    def predict(self, x):
        """The law at compute ``x`` (float or array, >= 0 or > -d).

        Beyond the fitted range it decreases monotonically towards ``c``.
        """
        x = np.asarray(x, dtype=np.float64)
        if np.any(x + self.d <= 0) or not np.all(np.isfinite(x)):
            raise ValueError(
                f"`x` must be finite and greater than -d = {-self.d:g}, got {x!r}."
            )
        y = self.a * np.power(x + self.d, -self.b) + self.c
        return float(y) if y.ndim == 0 else y

    def __call__(self, x):
        return self.predict(x)

    def __str__(self):
        return f"E = {self.a:.4g}·(C + {self.d:.4g})^(-{self.b:.4g}) + {self.c:.4g}"

    def to_dict(self):
        """The coefficients and their uncertainties as a JSON-ready dict."""
        out = {}
        for k in PARAMETERS:
            out[k] = float(getattr(self, k))
            out[f"{k}_err"] = float(getattr(self, f"{k}_err"))
        out["law"] = str(self)
        out["rms_log_residual"] = float(self.rms_log_residual)
        return out


def _as_points(x, error):
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    e = np.asarray(error, dtype=np.float64).reshape(-1)
    if x.shape != e.shape:
        raise ValueError(
            f"`x` and `error` must have the same length, got {x.size} and {e.size}."
        )
    if x.size < 3:
        raise ValueError(f"`x` must hold at least 3 points, got {x.size}.")
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ValueError(f"`x` must be finite and > 0, got {x!r}.")
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"`error` must be finite and > 0, got {e!r}.")
    return x, e


def _log_model(theta, x, c_fixed):
    log_a, b, c, d = _unpack(theta, c_fixed)
    return np.log(np.exp(log_a) * np.power(x + d, -b) + c)


def _unpack(theta, c_fixed):
    if c_fixed is None:
        return theta
    log_a, b, d = theta
    return log_a, b, c_fixed, d


def _jacobian_abcd(a, b, c, d, x):
    """d log(E_fit) / d(a, b, c, d) at the points ``x`` (analytic)."""
    u = np.power(x + d, -b)
    e = a * u + c
    return np.stack(
        [u / e, -a * u * np.log(x + d) / e, 1.0 / e, -a * b * u / (x + d) / e],
        axis=1,
    )


def fit_saturating_power_law(x, error, *, fixed_c=None, max_exponent=5.0):
    """Fits ``E = a·(x + d)^(-b) + c`` to points by least squares on ``log E``.

    Bounds: ``a > 0``, ``0 < b <= max_exponent``, ``0 <= c < min(error)`` (or
    ``c = fixed_c``), ``0 <= d <= 100 × the geometric-mean x``. Several starts
    (a grid over ``b``, ``c`` and ``d``; ``a`` solved for each) are refined with
    `scipy.optimize.least_squares` (trust-region reflective) and the lowest cost
    wins, so a handful of points suffices.

    Args:
        x: 1-D array-like of compute values (> 0; any unit, e.g. FLOPs or
            core-days; ``d`` is returned in the same unit).
        error: 1-D array-like of errors in (0, 1] (or any positive metric).
        fixed_c: float or None. Fix the saturation ``c`` (e.g. 0 for a pure
            power law with offset) instead of fitting it.
        max_exponent: float. Upper bound on ``b``.

    Returns:
        `PowerLawFit`.

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.scaling import fit_saturating_power_law
    >>> x = np.logspace(0, 4, 12)
    >>> law = fit_saturating_power_law(x, 0.3 * (x + 2.0) ** -0.5 + 0.02)
    >>> round(law.a, 3), round(law.b, 3), round(law.c, 3), round(law.d, 3)
    (0.3, 0.5, 0.02, 2.0)
    """
    from scipy import optimize

    x, e = _as_points(x, error)
    max_exponent = check_float("max_exponent", max_exponent, minimum=0.0)
    if fixed_c is not None:
        if isinstance(fixed_c, bool) or not isinstance(fixed_c, numbers.Real):
            raise TypeError(f"`fixed_c` must be a float or None, got {fixed_c!r}.")
        fixed_c = float(fixed_c)
        if not 0.0 <= fixed_c < e.min():
            raise ValueError(
                f"`fixed_c` must be >= 0 and below the smallest error {e.min():g}, "
                f"got {fixed_c!r}."
            )
    scale = float(np.exp(np.mean(np.log(x))))
    xs = x / scale
    log_e = np.log(e)
    c_hi = e.min() * (1.0 - 1e-9)

    def residuals(theta):
        return _log_model(theta, xs, fixed_c) - log_e

    best = None
    c_starts = (
        (fixed_c,) if fixed_c is not None else (0.0, 0.5 * e.min(), 0.9 * e.min())
    )
    for b0, c0, d0 in itertools.product(
        (0.1, 0.3, 1.0, 2.0), c_starts, (0.0, 0.1, 1.0)
    ):
        b0 = min(b0, max_exponent)
        # Solve for a given the others: mean of log(E - c) + b log(x + d).
        log_a0 = float(
            np.mean(np.log(np.maximum(e - c0, 1e-12)) + b0 * np.log(xs + d0))
        )
        if fixed_c is None:
            theta0 = [log_a0, b0, c0, d0]
            lower = [-60.0, 0.0, 0.0, 0.0]
            upper = [60.0, max_exponent, c_hi, 100.0]
        else:
            theta0 = [log_a0, b0, d0]
            lower = [-60.0, 0.0, 0.0]
            upper = [60.0, max_exponent, 100.0]
        theta0 = np.clip(theta0, lower, np.asarray(upper) - 1e-12)
        try:
            res = optimize.least_squares(
                residuals, theta0, bounds=(lower, upper), method="trf",
                x_scale="jac", xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=5000,
            )  # fmt: skip
        except (ValueError, FloatingPointError):
            continue
        if not np.all(np.isfinite(res.fun)):
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is None:
        raise RuntimeError("The power-law fit failed from every starting point.")

    log_a, b, c, d = _unpack(best.x, fixed_c)
    # Back to the caller's units: a·(x/s + d')^-b = a·s^b·(x + d'·s)^-b.
    a = float(np.exp(log_a) * scale**b)
    d = float(d * scale)
    b, c = float(b), float(c)
    r = _log_model(best.x, xs, fixed_c) - log_e
    errs = _uncertainties(a, b, c, d, x, r, fixed_c is not None, scale)
    return PowerLawFit(
        a=a, b=b, c=c, d=d, **errs, x=tuple(x.tolist()), error=tuple(e.tolist()),
        rms_log_residual=float(np.sqrt(np.mean(r**2))),
    )  # fmt: skip


def _uncertainties(a, b, c, d, x, r, c_fixed, scale):
    # Columns scaled to the parameters' magnitudes (a by itself, d by the
    # compute scale): in FLOPs, a can be ~1e40 and d ~1e12, and the unscaled
    # JᵀJ would look singular for units alone. The covariance is the same.
    units = np.array([max(abs(a), 1e-300), 1.0, 1.0, scale])
    free = [0, 1, 3] if c_fixed else [0, 1, 2, 3]
    units = units[free]
    jac = _jacobian_abcd(a, b, c, d, x)[:, free] * units
    dof = x.size - len(free)
    out = {f"{k}_err": math.nan for k in PARAMETERS}
    if c_fixed:
        out["c_err"] = 0.0
    if dof <= 0:
        return out
    sigma2 = float(np.sum(r**2)) / dof
    jtj = jac.T @ jac
    if not np.all(np.isfinite(jtj)) or np.linalg.cond(jtj) > 1e15:
        return out
    cov = np.linalg.inv(jtj) * sigma2 * np.outer(units, units)
    for i, k in zip(free, np.sqrt(np.abs(np.diag(cov))), strict=True):
        out[f"{PARAMETERS[i]}_err"] = float(k)
    return out


def lower_envelope(x, error):
    """The frontier points: those whose error beats every run with less compute.

    Args:
        x: 1-D array-like of compute values.
        error: 1-D array-like of errors, same length.

    Returns:
        ``(x, error)`` NumPy arrays sorted by compute, error strictly decreasing.

    Example:
    >>> from keras_scalevit.scaling import lower_envelope
    >>> lower_envelope([1, 2, 3, 4], [0.5, 0.6, 0.4, 0.4])
    (array([1., 3.]), array([0.5, 0.4]))
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    e = np.asarray(error, dtype=np.float64).reshape(-1)
    if x.shape != e.shape:
        raise ValueError(
            f"`x` and `error` must have the same length, got {x.size} and {e.size}."
        )
    order = np.lexsort((e, x))  # by compute, ties: best error first
    keep, best = [], np.inf
    for i in order:
        if e[i] < best:
            keep.append(i)
            best = e[i]
    keep = np.asarray(keep, dtype=np.int64)
    return x[keep], e[keep]


def fit_frontier(runs, *, x_key="compute", error_key="error", fixed_c=None):
    """Fits the law to the lower envelope of many runs (the paper's frontier).

    Args:
        runs: iterable of ``(compute, error)`` pairs or of dicts holding
            ``x_key`` and ``error_key``.
        x_key, error_key: str, keys used for dict runs.
        fixed_c: float or None, see `fit_saturating_power_law`.

    Returns:
        `PowerLawFit` whose ``x``/``error`` are the envelope points.

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.scaling import fit_frontier
    >>> law = lambda c: 0.3 * (c + 1.0) ** -0.4 + 0.05
    >>> runs = [(c, law(c) * k) for c in np.logspace(0, 4, 9) for k in (1.0, 1.3)]
    >>> round(fit_frontier(runs).b, 3)
    0.4
    """
    xs, es = [], []
    for run in runs:
        if isinstance(run, dict):
            xs.append(run[x_key])
            es.append(run[error_key])
        else:
            cx, ce = run
            xs.append(cx)
            es.append(ce)
    fx, fe = lower_envelope(xs, es)
    return fit_saturating_power_law(fx, fe, fixed_c=fixed_c)
