"""Few-shot linear evaluation against big_vision's fixture and independent solvers.

Fixture: ``fewshot/digits_fewshot.npz`` (big_vision's ``fewshot_lsr`` on 96-d
features of sklearn digits; 1000 train / 797 test, shots 1, 2, 5, 10, 25, seeds
0-2, l2 2^-4 ... 2^14). big_vision solves in float32; its predictions equal a
float64 solve only for the manifest's ``float64_stable_l2_regs``, and the
manifest counts how many predictions a float64 solve changes for every l2
(``checks.float64_solution_prediction_disagreements_by_l2``).
"""

import numpy as np
import pytest
from conftest import load_fixture
from sklearn.linear_model import Ridge

from keras_scalevit.evaluation import (
    fewshot_accuracy,
    fewshot_evaluate,
    fewshot_predictions,
    sample_shots,
    select_l2_reg,
)

FIXTURE = "fewshot/digits_fewshot.npz"


@pytest.fixture(scope="module")
def fx():
    return load_fixture(FIXTURE)


@pytest.fixture(scope="module")
def entry(bv_manifest):
    return bv_manifest["files"][FIXTURE]


def _cases(fx):
    for i, l2 in enumerate(fx["l2_regs"]):
        for j, seed in enumerate(fx["seeds"]):
            for k, shots in enumerate(fx["shots"]):
                yield i, j, k, float(l2), int(seed), int(shots)


def _independent_design(x_shots, x_eval):
    """The spec's standardisation and bias column, written out in float64."""
    x_shots = x_shots.astype(np.float64)
    mu = x_shots.sum(0) / x_shots.shape[0]
    sd = np.sqrt(((x_shots - mu) ** 2).sum(0) / x_shots.shape[0]) + 1e-5

    def design(x):
        z = (x.astype(np.float64) - mu) / sd
        return np.hstack([z, 100.0 * np.ones((z.shape[0], 1))])

    return design(x_shots), design(x_eval)


# ----------------------------------------------------------------- sampling


def test_shot_indices_match_bigvision(fx):
    for seed in fx["seeds"]:
        for shots in fx["shots"]:
            got = sample_shots(
                fx["train_labels"], int(shots), int(seed), num_classes=10
            )
            want = fx[f"train_indices/seed{seed}/shots{shots}"]
            np.testing.assert_array_equal(got, want)


def test_shots_are_nested_and_class_ordered(fx):
    labels = fx["train_labels"]
    small = sample_shots(labels, 3, 7, num_classes=10)
    large = sample_shots(labels, 8, 7, num_classes=10)
    np.testing.assert_array_equal(small, large.reshape(10, 8)[:, :3].reshape(-1))
    np.testing.assert_array_equal(labels[large], np.repeat(np.arange(10), 8))


# ----------------------------------------------------- big_vision's numbers


def test_identical_to_bigvision_for_stable_l2(fx, entry):
    stable = set(entry["float64_stable_l2_regs"])
    assert 1024.0 in stable  # big_vision's default is among them
    n_test = fx["test_labels"].shape[0]
    checked = 0
    for i, j, k, l2, seed, shots in _cases(fx):
        if l2 not in stable:
            continue
        idx = fx[f"train_indices/seed{seed}/shots{shots}"]
        args = (fx["train_features"][idx], fx["train_labels"][idx])
        pred = fewshot_predictions(
            *args, fx["test_features"], num_classes=10, l2_reg=l2
        )
        np.testing.assert_array_equal(pred, fx["predictions"][i, j, k])
        acc = fewshot_accuracy(
            *args, fx["test_features"], fx["test_labels"], num_classes=10, l2_reg=l2
        )
        # big_vision's accuracy is a float32 mean: compare correct counts.
        assert round(acc * n_test) == round(float(fx["accuracy"][i, j, k]) * n_test)
        checked += 1
    assert checked == 3 * 3 * 5


def test_ill_conditioned_l2_differs_only_as_a_float64_solve_does(fx, entry):
    """For unstable l2, big_vision's float32 answers are off from exact ones.

    The manifest records how many of big_vision's predictions a float64 solve
    changes per l2; ours must change exactly those many (and no more).
    Measured max per (seed, shots): 117 predictions / 27 correct at l2=2^-4,
    3 / 1 at l2=4, 1 / 1 for 16 <= l2 <= 256.
    """
    expected = entry["checks"]["float64_solution_prediction_disagreements_by_l2"]
    n_test = fx["test_labels"].shape[0]
    differing = np.zeros(len(fx["l2_regs"]), np.int64)
    worst_count = np.zeros(len(fx["l2_regs"]), np.int64)
    for i, j, k, l2, seed, shots in _cases(fx):
        idx = fx[f"train_indices/seed{seed}/shots{shots}"]
        pred = fewshot_predictions(
            fx["train_features"][idx],
            fx["train_labels"][idx],
            fx["test_features"],
            num_classes=10,
            l2_reg=l2,
        )
        differing[i] += int(np.sum(pred != fx["predictions"][i, j, k]))
        ours = int(np.sum(pred == fx["test_labels"]))
        theirs = round(float(fx["accuracy"][i, j, k]) * n_test)
        worst_count[i] = max(worst_count[i], abs(ours - theirs))
    assert differing.tolist() == expected
    # From l2 = 4 on, the float64 accuracy is within one test example of
    # big_vision's (measured: 1). Below, big_vision's float32 solve is itself
    # inaccurate (up to 117 of 797 predictions off the exact solution) and its
    # answers move between JAX versions (spec §6), so only the count above is
    # asserted there.
    l2s = fx["l2_regs"]
    assert np.all(worst_count[l2s >= 4.0] <= 1), dict(
        zip(l2s.tolist(), worst_count, strict=True)
    )


def test_evaluate_matches_bigvision_per_seed_and_mean(fx):
    out = fewshot_evaluate(
        fx["train_features"],
        fx["train_labels"],
        fx["test_features"],
        fx["test_labels"],
        num_classes=10,
        name="digits",
        shots=tuple(int(s) for s in fx["shots"]),
        seeds=tuple(int(s) for s in fx["seeds"]),
        l2_reg=1024.0,
    )
    i = int(np.flatnonzero(fx["l2_regs"] == 1024.0)[0])
    n_test = fx["test_labels"].shape[0]
    for k, shots in enumerate(fx["shots"]):
        per_seed = []
        for j, seed in enumerate(fx["seeds"]):
            got = out[f"digits_{shots}shot-seed-{seed}"]
            want = float(fx["accuracy"][i, j, k])
            assert round(got * n_test) == round(want * n_test)
            per_seed.append(round(want * n_test) / n_test)
        np.testing.assert_allclose(
            out[f"digits_{shots}shot"], np.mean(per_seed), rtol=1e-12
        )


# --------------------------------------------------- independent solvers


@pytest.mark.parametrize("l2", [64.0, 1024.0, 16384.0])
def test_agrees_with_sklearn_ridge(fx, l2):
    """scikit-learn's Ridge on the same design matrix and {-1, 1} targets."""
    for seed in (0, 2):
        for shots in (2, 10, 25):  # both branches (N < D+1 and N >= D+1)
            idx = fx[f"train_indices/seed{seed}/shots{shots}"]
            a, a_test = _independent_design(
                fx["train_features"][idx], fx["test_features"]
            )
            y = fx["train_labels"][idx]
            targets = np.where(y[:, None] == np.arange(10)[None, :], 1.0, -1.0)
            ridge = Ridge(alpha=l2, fit_intercept=False, solver="svd").fit(a, targets)
            want = np.argmax(ridge.predict(a_test), axis=1)
            got = fewshot_predictions(
                fx["train_features"][idx],
                y,
                fx["test_features"],
                num_classes=10,
                l2_reg=l2,
            )
            np.testing.assert_array_equal(got, want)


def test_agrees_with_augmented_lstsq_for_all_l2(fx):
    """min |A w - Y|² + l2 |w|² as lstsq on [A; √l2 I] (no normal equations).

    Both are float64 solves of the same problem, so they agree even where
    big_vision's float32 answer does not.
    """
    for l2 in fx["l2_regs"]:
        for shots in (1, 5, 10, 25):
            idx = fx[f"train_indices/seed1/shots{shots}"]
            a, a_test = _independent_design(
                fx["train_features"][idx], fx["test_features"]
            )
            y = fx["train_labels"][idx]
            targets = np.where(y[:, None] == np.arange(10)[None, :], 1.0, -1.0)
            stacked = np.vstack([a, np.sqrt(l2) * np.eye(a.shape[1])])
            rhs = np.vstack([targets, np.zeros((a.shape[1], 10))])
            w = np.linalg.lstsq(stacked, rhs, rcond=None)[0]
            want = np.argmax(a_test @ w, axis=1)
            got = fewshot_predictions(
                fx["train_features"][idx],
                y,
                fx["test_features"],
                num_classes=10,
                l2_reg=float(l2),
            )
            np.testing.assert_array_equal(got, want)


def test_bias_column_matters_with_unequal_classes():
    """With unequal class counts the bias weight differs per class (spec §6).

    An independent lstsq solve with the 100-valued bias column must agree,
    and one with a bias of 1 (more penalised) gives different scores.
    """
    rng = np.random.default_rng(3)
    labels = np.array([0] * 12 + [1] * 3 + [2] * 6)
    x = rng.normal(size=(21, 5)) + np.eye(3, 5)[labels]
    x_test = rng.normal(size=(400, 5)) * 1.5
    a, a_test = _independent_design(x, x_test)
    targets = np.where(labels[:, None] == np.arange(3)[None, :], 1.0, -1.0)
    l2 = 30.0
    w = np.linalg.solve(a.T @ a + l2 * np.eye(6), a.T @ targets)
    got = fewshot_predictions(x, labels, x_test, num_classes=3, l2_reg=l2)
    np.testing.assert_array_equal(got, np.argmax(a_test @ w, axis=1))
    a1, a1_test = a.copy(), a_test.copy()
    a1[:, -1], a1_test[:, -1] = 1.0, 1.0
    w1 = np.linalg.solve(a1.T @ a1 + l2 * np.eye(6), a1.T @ targets)
    assert np.any(np.argmax(a1_test @ w1, axis=1) != got)


# ------------------------------------------------------------- l2 sweep


def test_select_l2_matches_brute_force(fx):
    grid = [0.25, 4.0, 64.0, 1024.0, 16384.0]
    idx = fx["train_indices/seed0/shots10"]
    x, y = fx["train_features"][idx], fx["train_labels"][idx]
    best, scores = select_l2_reg(
        x, y, num_classes=10, l2_grid=grid, holdout_fraction=0.2
    )
    # Independent split: per class, the last 2 of its 10 rows are held out.
    held = np.zeros(len(y), bool)
    for c in range(10):
        held[np.flatnonzero(y == c)[-2:]] = True
    for l2 in grid:
        want = fewshot_accuracy(
            x[~held], y[~held], x[held], y[held], num_classes=10, l2_reg=l2
        )
        assert scores[l2] == want
    top = max(scores.values())
    assert best == max(l2 for l2 in grid if scores[l2] == top)


def test_evaluate_reports_sweep_separately(fx):
    out = fewshot_evaluate(
        fx["train_features"],
        fx["train_labels"],
        fx["test_features"],
        fx["test_labels"],
        num_classes=10,
        name="digits",
        shots=(1, 5),
        seeds=(0,),
        l2_sweep=[1.0, 1024.0],
    )
    assert "digits_1shot-l2sweep" not in out  # nothing to hold out at 1 shot
    chosen = out["digits_5shot-l2sweep-seed-0-l2"]
    assert chosen in (1.0, 1024.0)
    idx = fx["train_indices/seed0/shots5"]
    want = fewshot_accuracy(
        fx["train_features"][idx],
        fx["train_labels"][idx],
        fx["test_features"],
        fx["test_labels"],
        num_classes=10,
        l2_reg=chosen,
    )
    assert out["digits_5shot-l2sweep"] == want
    # The faithful number stays big_vision's (l2 = 1024).
    assert out["digits_5shot"] == fewshot_accuracy(
        fx["train_features"][idx],
        fx["train_labels"][idx],
        fx["test_features"],
        fx["test_labels"],
        num_classes=10,
    )


# ------------------------------------------------------------- bad input


def _toy():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 4)
    return rng.normal(size=(12, 4)), labels


def test_error_train_feature_label_count_mismatch():
    x, y = _toy()
    with pytest.raises(ValueError, match="train_features.*12 rows.*train_labels.*11"):
        fewshot_accuracy(x, y[:-1], x, y, num_classes=3)


def test_error_test_feature_label_count_mismatch():
    x, y = _toy()
    with pytest.raises(ValueError, match="test_features.*12 rows.*test_labels.*10"):
        fewshot_accuracy(x, y, x, y[:10], num_classes=3)


@pytest.mark.parametrize("bad", [-1, 3])
def test_error_train_label_out_of_range(bad):
    x, y = _toy()
    y = y.copy()
    y[5] = bad
    with pytest.raises(ValueError, match=rf"train_labels.*\[0, 3\).*{bad}"):
        fewshot_accuracy(x, y, x, np.zeros(12, int), num_classes=3)


def test_error_test_label_out_of_range():
    x, y = _toy()
    with pytest.raises(ValueError, match=r"test_labels.*\[0, 3\).*7"):
        fewshot_accuracy(x, y, x, np.full(12, 7), num_classes=3)


def test_error_sample_shots_label_out_of_range():
    with pytest.raises(ValueError, match=r"labels.*\[0, 2\).*5"):
        sample_shots(np.array([0, 1, 5]), 1, 0, num_classes=2)


def test_error_empty_class():
    x, y = _toy()
    with pytest.raises(ValueError, match=r"train_labels.*class\(es\) \[3\]"):
        fewshot_accuracy(x, y, x, y, num_classes=4)
    with pytest.raises(ValueError, match=r"labels.*class\(es\) \[1\]"):
        sample_shots(np.array([0, 0, 2, 2]), 1, 0, num_classes=3)


def test_warning_more_shots_than_a_class_has():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 5)
    with pytest.warns(UserWarning, match="shots=3 but class 1 has 2"):
        idx = sample_shots(labels, 3, 0, num_classes=3)
    # big_vision's behaviour: the short class contributes what it has.
    np.testing.assert_array_equal(labels[idx], [0, 0, 0, 1, 1, 2, 2, 2])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 3))
    with pytest.warns(UserWarning, match="class 1 has 2"):
        fewshot_evaluate(x, labels, x, labels, num_classes=3, shots=(3,), seeds=(0,))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 3, "l2_reg": 0.0}, "l2_reg"),
        ({"num_classes": 3, "l2_reg": float("nan")}, "l2_reg"),
    ],
)
def test_error_bad_arguments(kwargs, match):
    x, y = _toy()
    with pytest.raises(ValueError, match=match):
        fewshot_accuracy(x, y, x, y, **kwargs)


def test_error_feature_width_and_nan():
    x, y = _toy()
    with pytest.raises(
        ValueError, match="test_features.*3 features.*train_features.*4"
    ):
        fewshot_accuracy(x, y, x[:, :3], y, num_classes=3)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="train_features.*NaN"):
        fewshot_accuracy(bad, y, x, y, num_classes=3)


def test_error_select_l2_one_shot():
    x, y = _toy()
    with pytest.raises(ValueError, match="1-shot"):
        select_l2_reg(x[::4], y[::4], num_classes=3)
