"""Saturating power-law fits: recovery of known coefficients from noisy points."""

import math

import numpy as np
import pytest

from keras_scalevit.scaling import (
    PowerLawFit,
    fit_frontier,
    fit_saturating_power_law,
    lower_envelope,
)

TRUE = dict(a=0.5, b=0.4, c=0.05, d=3.0)
X = np.logspace(0, 5, 40)


def _law(x, a, b, c, d):
    return a * (x + d) ** -b + c


def _linear_std_errors(x, noise, a, b, c, d):
    """Standard errors of (a, b, c, d) for log-normal noise of std ``noise``.

    Computed here, independently of the code under test: the Gauss-Newton
    covariance noise² (JᵀJ)⁻¹ of the log-space model at the true coefficients,
    J by central finite differences.
    """
    theta = np.array([a, b, c, d])
    cols = []
    for i in range(4):
        h = 1e-6 * max(abs(theta[i]), 1e-3)
        up, dn = theta.copy(), theta.copy()
        up[i] += h
        dn[i] -= h
        cols.append((np.log(_law(x, *up)) - np.log(_law(x, *dn))) / (2 * h))
    jac = np.stack(cols, axis=1)
    return np.sqrt(np.diag(np.linalg.inv(jac.T @ jac))) * noise


def test_exact_points_are_recovered_to_round_off():
    fit = fit_saturating_power_law(X, _law(X, **TRUE))
    for k, v in TRUE.items():
        # Noise-free data: only the solver's tolerances (1e-14) and float64
        # round-off remain; 1e-6 relative is far above both.
        assert getattr(fit, k) == pytest.approx(v, rel=1e-6), k
    assert fit.rms_log_residual < 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_points_recover_known_coefficients(seed):
    noise = 0.01  # 1% multiplicative (log-normal) noise
    rng = np.random.default_rng(seed)
    e = _law(X, **TRUE) * np.exp(noise * rng.standard_normal(X.size))
    fit = fit_saturating_power_law(X, e)
    std = _linear_std_errors(X, noise, **TRUE)
    for i, k in enumerate("abcd"):
        # 4 standard errors: a chance of ~6e-5 per coefficient to fail for a
        # correct fit; the standard errors follow from the noise level alone.
        assert abs(getattr(fit, k) - TRUE[k]) < 4 * std[i], (k, getattr(fit, k))
        # The reported uncertainty agrees with the noise-derived one up to the
        # scatter of the residual-based noise estimate (40 points) and the
        # linearisation at the fitted instead of the true point.
        assert getattr(fit, f"{k}_err") == pytest.approx(std[i], rel=0.4), k
    assert fit.rms_log_residual == pytest.approx(noise, rel=0.3)


def test_few_points_and_fixed_c():
    x = np.logspace(0, 4, 5)
    fit = fit_saturating_power_law(x, _law(x, **TRUE))
    assert fit.b == pytest.approx(TRUE["b"], rel=1e-4)
    pure = fit_saturating_power_law(x, _law(x, 0.5, 0.4, 0.0, 3.0), fixed_c=0.0)
    assert (pure.a, pure.b, pure.c, pure.d) == pytest.approx((0.5, 0.4, 0.0, 3.0))
    assert pure.c_err == 0.0
    # 4 points for 4 parameters: no degrees of freedom left for uncertainties.
    four = fit_saturating_power_law(x[:4], _law(x[:4], **TRUE))
    assert math.isnan(four.a_err)


# The paper's Figure 2 prints its fitted frontier laws in the figure itself (not
# in its text), compute C in TPU-v3 core-days, error E as a fraction:
# ImageNet fine-tuning E = 0.09 + 0.26·(C + 0.01)^-0.35 and ImageNet 10-shot
# E = 0.12 + 0.63·(C + 0.52)^-0.32. Points sampled off them with 1% noise over
# the figure's compute range (~0.1 to ~10^4 core-days) must give them back.
PAPER_FIGURE_2_LAWS = {
    "finetune": dict(a=0.26, b=0.35, c=0.09, d=0.01),
    "10shot": dict(a=0.63, b=0.32, c=0.12, d=0.52),
}


@pytest.mark.parametrize("name", sorted(PAPER_FIGURE_2_LAWS))
def test_the_papers_figure_2_laws_are_recovered(name):
    true = PAPER_FIGURE_2_LAWS[name]
    x = np.logspace(-1, 4, 25)
    noise = 0.01
    rng = np.random.default_rng(7)
    e = _law(x, **true) * np.exp(noise * rng.standard_normal(x.size))
    fit = fit_saturating_power_law(x, e)
    std = _linear_std_errors(x, noise, **true)
    for i, k in enumerate("abcd"):
        # 4 standard errors of the noise-derived covariance, as above.
        assert abs(getattr(fit, k) - true[k]) < 4 * std[i], (k, getattr(fit, k))
    # The exponent and the asymptote, the numbers a reader compares, to 2 digits.
    assert round(fit.b, 2) == pytest.approx(true["b"], abs=0.011)
    assert round(fit.c, 2) == pytest.approx(true["c"], abs=0.011)


def test_predict_extrapolates_towards_c():
    law = PowerLawFit(**TRUE)
    far = law.predict(np.array([1e6, 1e9, 1e12]))
    assert np.all(np.diff(far) < 0) and np.all(far > TRUE["c"])
    assert law.predict(1e30) == pytest.approx(TRUE["c"])
    assert law(0.0) == pytest.approx(0.5 * 3.0**-0.4 + 0.05)
    with pytest.raises(ValueError, match="`x`"):
        law.predict(-5.0)
    assert str(law) == "E = 0.5·(C + 3)^(-0.4) + 0.05"


def test_lower_envelope_and_frontier():
    x, e = lower_envelope([4, 1, 2, 3, 3], [0.1, 0.5, 0.6, 0.2, 0.3])
    assert x.tolist() == [1, 3, 4] and e.tolist() == [0.5, 0.2, 0.1]
    # Three "model sizes": each saturates at its own floor; the envelope of
    # their runs is the frontier law min over sizes, and the points on the
    # true frontier law are among them.
    runs = [dict(compute=c, error=_law(c, **TRUE)) for c in X[::4]]
    for floor in (0.15, 0.3):
        runs += [dict(compute=c, error=_law(c, **TRUE) + floor) for c in X[::3]]
    fit = fit_frontier(runs)
    assert (fit.a, fit.b, fit.c, fit.d) == pytest.approx(tuple(TRUE.values()), rel=1e-5)
    assert len(fit.x) == len(X[::4])


@pytest.mark.parametrize(
    "x, e, kwargs, match",
    [
        ([1, 2], [0.1, 0.2], {}, "at least 3"),
        ([1, 2, 3], [0.1, 0.2], {}, "same length"),
        ([0, 2, 3], [0.3, 0.2, 0.1], {}, "`x`"),
        ([1, 2, 3], [0.3, 0.0, 0.1], {}, "`error`"),
        ([1, 2, 3], [0.3, 0.2, 0.1], {"fixed_c": 0.2}, "fixed_c"),
    ],
)
def test_bad_input(x, e, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_saturating_power_law(x, e, **kwargs)


def test_uncertainties_do_not_depend_on_the_unit_of_compute():
    # Compute in FLOPs (~1e9..1e14) makes a ~1e40-scale and d ~1e10-scale: the
    # uncertainties must be those of the same points in small units, rescaled
    # (b and c are unit-free, d scales with the unit), not NaN.
    rng = np.random.default_rng(3)
    x = np.logspace(0, 5, 12)
    e = _law(x, **TRUE) * np.exp(0.02 * rng.standard_normal(x.size))
    small = fit_saturating_power_law(x, e)
    flops = fit_saturating_power_law(x * 1e9, e)
    assert math.isfinite(small.b_err) and small.b_err > 0
    for k in ("b", "c", "b_err", "c_err"):
        assert getattr(flops, k) == pytest.approx(getattr(small, k), rel=1e-5), k
    assert flops.d_err == pytest.approx(small.d_err * 1e9, rel=1e-5)
