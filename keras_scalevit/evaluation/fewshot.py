"""Few-shot linear evaluation: big_vision's closed-form ridge regression.

big_vision (``evaluators/fewshot_lsr.py``, spec §6) measures a frozen
representation by drawing ``k`` training examples per class, fitting a ridge
regression from standardised features to ``{-1, +1}`` one-hot targets in closed
form, and reporting the test accuracy of its argmax. This module is that
computation in NumPy float64:

- ``sample_shots``: big_vision's shot draw for one seed.
- ``fewshot_predictions`` / ``fewshot_accuracy``: the solve for one shot set.
- ``select_l2_reg``: an optional l2 chosen on held-out training shots (not in
  big_vision; reported apart from the faithful number).
- ``fewshot_evaluate``: shots x seeds for one data set, as a dict of accuracies
  named like big_vision's (``<dataset>_<k>shot-seed-<s>``) plus seed means.

Why float64 NumPy: big_vision solves in float32, which is ill-conditioned for
small l2. In float64 the predictions equal big_vision's for l2 >= 1024 (its
default) on the shared fixture, while float32 solves through other libraries'
``eigh`` flip near-ties. Keras maps float64 to float32 on the JAX and torch
backends, so the solve cannot go through ``keras.ops``.
"""

import numbers
import warnings

import numpy as np

from keras_scalevit.utils.validation import (
    check_bool,
    check_float,
    check_int,
    check_positive_float,
    check_positive_int,
)

# big_vision's constant bias feature: large so that its weight is barely
# penalised by the l2 term (which covers every column, the bias included).
BIAS_CONSTANT = 100.0
# Added to the per-feature standard deviation (not the variance).
STD_EPSILON = 1e-5
DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2_REG = 2.0**10
DEFAULT_NUM_SEEDS = 3
# The grid of the shared fixture (2^-4 ... 2^14 by factors of 4).
DEFAULT_L2_GRID = tuple(2.0**e for e in range(-4, 15, 2))
# Test rows are standardised and scored in chunks so that a large test split
# is never copied to float64 in one piece.
_PREDICT_CHUNK_ROWS = 8192


# --------------------------------------------------------------------------
# Argument checks (errors name the argument, the value and what is allowed).
# --------------------------------------------------------------------------


def _check_num_classes(num_classes):
    return check_positive_int("num_classes", num_classes)


def _check_l2(l2_reg, name="l2_reg"):
    return check_positive_float(name, l2_reg)


def _check_features(features, name):
    array = np.asarray(features)
    if (
        array.dtype == object
        or not (
            np.issubdtype(array.dtype, np.floating)
            or np.issubdtype(array.dtype, np.integer)
        )
        or array.dtype == bool
    ):
        raise TypeError(
            f"`{name}` must hold real numbers (a float or int array), got dtype "
            f"{array.dtype}."
        )
    if array.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array (examples, features), got shape "
            f"{array.shape}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"`{name}` must have at least one row and one feature column, got "
            f"shape {array.shape}."
        )
    finite = np.isfinite(array)
    if not np.all(finite):
        rows = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(
            f"`{name}` must be finite, got NaN or infinite values in "
            f"{rows.size} row(s), e.g. row(s) {rows[:5].tolist()} (a diverged "
            "model, or bad input images?)."
        )
    return array


def _check_labels(labels, name, num_classes, num_rows=None, rows_name=None):
    array = np.asarray(labels)
    if array.size and (
        array.dtype == bool or not np.issubdtype(array.dtype, np.integer)
    ):
        raise TypeError(
            f"`{name}` must hold integer class ids, got dtype {array.dtype}."
        )
    if array.ndim != 1:
        raise ValueError(
            f"`{name}` must be a 1-D array of integer class ids (not one-hot), "
            f"got shape {array.shape}."
        )
    if num_rows is not None and array.shape[0] != num_rows:
        raise ValueError(
            f"`{rows_name}` has {num_rows} rows but `{name}` has {array.shape[0]} "
            "labels; they must have the same number of examples."
        )
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= num_classes:
            bad = array[(array < 0) | (array >= num_classes)]
            raise ValueError(
                f"`{name}` must lie in [0, num_classes) = [0, {num_classes}), "
                f"got values such as {sorted(set(bad.tolist()))[:5]}."
            )
    return array.astype(np.int64)


def _check_no_empty_class(labels, num_classes, name):
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"`{name}` has no examples of class(es) {empty.tolist()[:20]} out of "
            f"num_classes={num_classes}; every class needs at least one training "
            "example (check num_classes and the split)."
        )
    return counts


# --------------------------------------------------------------------------
# Shot sampling.
# --------------------------------------------------------------------------


def _class_rows(labels, num_classes):
    """Row indices of each class, in increasing row order."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    return np.split(order, np.cumsum(counts)[:-1])


def _class_permutations(labels, seed, num_classes):
    """big_vision's draw: one generator per seed, one permutation per class."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(rows) for rows in _class_rows(labels, num_classes)]


def _warn_short_classes(counts, shots):
    short = np.flatnonzero(counts < shots)
    if short.size:
        details = ", ".join(f"class {c} has {counts[c]}" for c in short[:20])
        warnings.warn(
            f"shots={shots} but {details} training example(s); using all of "
            "them for those classes (as big_vision does).",
            UserWarning,
            stacklevel=3,
        )


def _check_test_labels(test_labels, test_features, num_classes):
    return _check_labels(
        test_labels,
        "test_labels",
        num_classes,
        num_rows=test_features.shape[0],
        rows_name="test_features",
    )


def _check_seed(seed, name="seed"):
    return check_int(name, seed, minimum=0)


def sample_shots(labels, shots, seed, *, num_classes):
    """Draws ``shots`` training rows per class exactly as big_vision does.

    ``np.random.default_rng(seed)`` draws one permutation of each class's row
    indices, classes in order ``0 .. num_classes - 1``; the first ``shots`` rows
    of each permutation are concatenated class by class. The sets are therefore
    nested across ``shots`` for a fixed seed. A class with fewer than ``shots``
    rows contributes all it has (with a warning naming it).

    Args:
        labels: 1-D integer array, the class of every training row.
        shots: positive int, examples per class.
        seed: non-negative int, the seed of ``np.random.default_rng``.
        num_classes: positive int; every class in ``[0, num_classes)`` must have
            at least one row.

    Returns:
        int64 array of row indices into ``labels`` (class 0's rows first).

    Raises:
        TypeError: a non-integer ``shots``, ``seed``, ``num_classes`` or labels.
        ValueError: ``shots < 1``, ``seed < 0``, labels outside
            ``[0, num_classes)`` or a class without rows.

    Example:

    >>> import numpy as np
    >>> from keras_scalevit.evaluation import sample_shots
    >>> labels = np.array([0, 1, 0, 1, 0, 1])
    >>> idx = sample_shots(labels, 2, seed=0, num_classes=2)
    >>> labels[idx].tolist()
    [0, 0, 1, 1]
    """
    num_classes = _check_num_classes(num_classes)
    shots = check_positive_int("shots", shots)
    seed = _check_seed(seed)
    labels = _check_labels(labels, "labels", num_classes)
    counts = _check_no_empty_class(labels, num_classes, "labels")
    _warn_short_classes(counts, shots)
    perms = _class_permutations(labels, seed, num_classes)
    return np.concatenate([p[:shots] for p in perms]).astype(np.int64)


# --------------------------------------------------------------------------
# The solve.
# --------------------------------------------------------------------------


class _RidgeSystem:
    """One eigendecomposition of the regularised least-squares system.

    The weights for any l2 follow without a new decomposition:
    ``W = (lhs * 1 / (eigs + l2)) @ rhs`` with, for ``A`` of shape (N, D+1),
    ``lhs = Q, rhs = Qᵀ AᵀY`` from ``AᵀA = Q diag(eigs) Qᵀ`` when N >= D+1, and
    ``lhs = AᵀQ, rhs = QᵀY`` from ``AAᵀ = Q diag(eigs) Qᵀ`` otherwise. Both are
    ``(AᵀA + l2 I)⁻¹ AᵀY``; the branch and the grouping follow big_vision.
    """

    def __init__(self, features, labels, num_classes):
        x = np.asarray(features, np.float64)
        self.mean = x.mean(axis=0, keepdims=True)
        # Population standard deviation (ddof=0), then the epsilon.
        self.std = x.std(axis=0, keepdims=True) + STD_EPSILON
        a = self._design(x)
        y = 2.0 * np.eye(num_classes, dtype=np.float64)[labels] - 1.0
        num_rows, width = a.shape
        if num_rows >= width:
            self.eigs, q = np.linalg.eigh(a.T @ a)
            self.lhs = q
            self.rhs = q.T @ (a.T @ y)
        else:
            self.eigs, q = np.linalg.eigh(a @ a.T)
            self.lhs = a.T @ q
            self.rhs = q.T @ y

    def _design(self, x):
        standardized = (x - self.mean) / self.std
        bias = np.full((x.shape[0], 1), BIAS_CONSTANT, np.float64)
        return np.concatenate([standardized, bias], axis=1)

    def weights(self, l2_reg):
        scaling = 1.0 / (self.eigs + l2_reg)
        return (self.lhs * scaling[None, :]) @ self.rhs

    def predict(self, features, weights):
        features = np.asarray(features)
        out = np.empty(features.shape[0], np.int64)
        for start in range(0, features.shape[0], _PREDICT_CHUNK_ROWS):
            chunk = np.asarray(
                features[start : start + _PREDICT_CHUNK_ROWS], np.float64
            )
            scores = self._design(chunk) @ weights
            out[start : start + chunk.shape[0]] = np.argmax(scores, axis=1)
        return out


def _check_problem(train_features, train_labels, test_features, num_classes):
    num_classes = _check_num_classes(num_classes)
    train_features = _check_features(train_features, "train_features")
    train_labels = _check_labels(
        train_labels,
        "train_labels",
        num_classes,
        num_rows=train_features.shape[0],
        rows_name="train_features",
    )
    _check_no_empty_class(train_labels, num_classes, "train_labels")
    test_features = _check_features(test_features, "test_features")
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"`test_features` has {test_features.shape[1]} features per row but "
            f"`train_features` has {train_features.shape[1]}; they must match."
        )
    return train_features, train_labels, test_features, num_classes


def fewshot_predictions(
    train_features,
    train_labels,
    test_features,
    *,
    num_classes,
    l2_reg=DEFAULT_L2_REG,
):
    """Test-set class predictions of big_vision's few-shot ridge regression.

    Standardises with the training rows' mean and (population) std + 1e-5,
    appends a constant feature of 100, regresses on targets ``2·onehot - 1``
    with penalty ``l2_reg`` on every weight (bias included), and returns the
    argmax of the test scores. Solved in float64.

    Args:
        train_features: (N, D) array, the representations of the shots.
        train_labels: (N,) integer array in ``[0, num_classes)``; every class
            needs at least one row.
        test_features: (M, D) array.
        num_classes: positive int.
        l2_reg: positive float, the ridge penalty (big_vision's default 1024).

    Returns:
        (M,) int64 array of predicted classes.

    Example:

    >>> import numpy as np
    >>> from keras_scalevit.evaluation import fewshot_predictions
    >>> x = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]])
    >>> y = np.array([0, 1, 0, 1])
    >>> fewshot_predictions(x, y, x, num_classes=2, l2_reg=1.0).tolist()
    [0, 1, 0, 1]
    """
    train_features, train_labels, test_features, num_classes = _check_problem(
        train_features, train_labels, test_features, num_classes
    )
    l2_reg = _check_l2(l2_reg)
    system = _RidgeSystem(train_features, train_labels, num_classes)
    return system.predict(test_features, system.weights(l2_reg))


def fewshot_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    num_classes,
    l2_reg=DEFAULT_L2_REG,
):
    """big_vision's few-shot accuracy for one set of training shots.

    The training rows are used as given (draw them with ``sample_shots``);
    see ``fewshot_predictions`` for the solve.

    Args:
        train_features: (N, D) array, the representations of the shots.
        train_labels: (N,) integer array in ``[0, num_classes)``; every class
            needs at least one row.
        test_features: (M, D) array.
        test_labels: (M,) integer array in ``[0, num_classes)``.
        num_classes: positive int.
        l2_reg: positive float, the ridge penalty (big_vision's default 1024).

    Returns:
        Python float, the fraction of test rows predicted correctly.

    Example:

    >>> import numpy as np
    >>> from keras_scalevit.evaluation import fewshot_accuracy, sample_shots
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(3), 20)
    >>> feats = rng.normal(size=(60, 8)) + 3.0 * np.eye(3, 8)[labels]
    >>> idx = sample_shots(labels, 5, seed=0, num_classes=3)
    >>> acc = fewshot_accuracy(
    ...     feats[idx], labels[idx], feats, labels, num_classes=3
    ... )
    >>> 0.0 <= acc <= 1.0
    True
    """
    train_features, train_labels, test_features, num_classes = _check_problem(
        train_features, train_labels, test_features, num_classes
    )
    test_labels = _check_test_labels(test_labels, test_features, num_classes)
    predictions = fewshot_predictions(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        l2_reg=l2_reg,
    )
    return float(np.mean(predictions == test_labels))


# --------------------------------------------------------------------------
# Optional l2 selection (not part of big_vision).
# --------------------------------------------------------------------------


def _check_l2_grid(l2_grid, name="l2_grid"):
    what = "a non-empty sequence of finite numbers > 0"
    if isinstance(l2_grid, (str, bytes, dict)) or not hasattr(l2_grid, "__iter__"):
        raise TypeError(f"`{name}` must be {what}, got {l2_grid!r}.")
    values = list(l2_grid)
    if not values:
        raise ValueError(f"`{name}` must be {what}, got an empty sequence.")
    return [check_positive_float(f"{name}[{i}]", v) for i, v in enumerate(values)]


def select_l2_reg(
    train_features,
    train_labels,
    *,
    num_classes,
    l2_grid=DEFAULT_L2_GRID,
    holdout_fraction=0.2,
):
    """Chooses l2 on a held-out part of the training shots (not in big_vision).

    For each class, the last ``max(1, round(holdout_fraction * n_c))`` of its
    ``n_c`` rows (in the given order, which ``sample_shots`` makes random) are
    held out, keeping at least one row to fit on; classes with a single row are
    not held out. The ridge regression is fitted on the rest for every l2 in
    ``l2_grid`` (one eigendecomposition) and the l2 with the best held-out
    accuracy wins; ties go to the largest l2, the better-conditioned solve.

    Args:
        train_features: (N, D) array, the shots.
        train_labels: (N,) integer array in ``[0, num_classes)``.
        num_classes: positive int.
        l2_grid: sequence of positive floats to choose from.
        holdout_fraction: float in (0, 1), the share of each class held out.

    Returns:
        ``(best_l2, holdout_accuracies)``: a float and a dict l2 -> accuracy.

    Raises:
        ValueError: if no class has two rows (1-shot), so nothing can be held
            out.

    Example:

    >>> import numpy as np
    >>> from keras_scalevit.evaluation import select_l2_reg
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(2), 10)
    >>> feats = rng.normal(size=(20, 4)) + 2.0 * np.eye(2, 4)[labels]
    >>> best, scores = select_l2_reg(feats, labels, num_classes=2)
    >>> best in scores
    True
    """
    num_classes = _check_num_classes(num_classes)
    train_features = _check_features(train_features, "train_features")
    train_labels = _check_labels(
        train_labels,
        "train_labels",
        num_classes,
        num_rows=train_features.shape[0],
        rows_name="train_features",
    )
    _check_no_empty_class(train_labels, num_classes, "train_labels")
    grid = _check_l2_grid(l2_grid)
    check_float(
        "holdout_fraction",
        holdout_fraction,
        minimum=0,
        maximum=1,
        min_inclusive=False,
        max_inclusive=False,
    )
    fit_rows, held_rows = [], []
    for c in range(num_classes):
        rows = np.flatnonzero(train_labels == c)
        n_held = 0
        if rows.size >= 2:
            n_held = min(
                max(1, int(round(holdout_fraction * rows.size))), rows.size - 1
            )
        fit_rows.append(rows[: rows.size - n_held])
        held_rows.append(rows[rows.size - n_held :])
    fit_rows = np.concatenate(fit_rows)
    held_rows = np.concatenate(held_rows)
    if held_rows.size == 0:
        raise ValueError(
            "`train_labels` must have at least one class with two or more rows "
            "for `select_l2_reg` to hold one out, got one row per class (1-shot)."
        )
    system = _RidgeSystem(train_features[fit_rows], train_labels[fit_rows], num_classes)
    held_x, held_y = train_features[held_rows], train_labels[held_rows]
    scores = {}
    for l2 in grid:
        predictions = system.predict(held_x, system.weights(l2))
        scores[l2] = float(np.mean(predictions == held_y))
    best_score = max(scores.values())
    best = max(l2 for l2, s in scores.items() if s == best_score)
    return best, scores


# --------------------------------------------------------------------------
# Shots x seeds for one data set.
# --------------------------------------------------------------------------


def _check_int_sequence(name, values, check):
    """An int or a non-empty sequence of distinct ints, each passing ``check``."""
    what = "an integer or a non-empty sequence of distinct integers"
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = (values,)
    if isinstance(values, (str, bytes, dict, bool)) or not hasattr(values, "__iter__"):
        raise TypeError(f"`{name}` must be {what}, got {values!r}.")
    values = tuple(check(f"{name}[{i}]", v) for i, v in enumerate(values))
    if not values:
        raise ValueError(f"`{name}` must be {what}, got an empty sequence.")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(
            f"`{name}` must not repeat values (each is reported once), got "
            f"{values!r} with {repeated} repeated."
        )
    return values


def _check_shots(shots):
    return _check_int_sequence("shots", shots, check_positive_int)


def _check_seeds(seeds):
    return _check_int_sequence("seeds", seeds, _check_seed_named)


def _check_seed_named(name, seed):
    return _check_seed(seed, name)


def fewshot_evaluate(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    num_classes,
    name="dataset",
    shots=DEFAULT_SHOTS,
    seeds=tuple(range(DEFAULT_NUM_SEEDS)),
    l2_reg=DEFAULT_L2_REG,
    l2_sweep=None,
    per_seed=True,
):
    """Few-shot accuracies of one data set for several shot counts and seeds.

    Draws the shots from the whole training split with ``sample_shots`` for
    every seed and solves with ``fewshot_accuracy`` (big_vision's procedure).

    Keys of the returned dict (``name`` = the data set's name):

    - ``"<name>_<k>shot-seed-<s>"``: big_vision's number for one seed (only if
      ``per_seed``);
    - ``"<name>_<k>shot"``: the mean over ``seeds`` (big_vision reports seeds
      separately; the mean is ours);
    - with ``l2_sweep``, for k >= 2: ``"<name>_<k>shot-l2sweep"`` (mean over
      seeds of the test accuracy at the l2 chosen by ``select_l2_reg`` on each
      seed's shots), and if ``per_seed`` also ``"...-l2sweep-seed-<s>"`` and
      the chosen ``"...-l2sweep-seed-<s>-l2"``. These are not big_vision's
      numbers and are kept apart from them.

    Args:
        train_features: (N, D) array, the whole training split's features.
        train_labels: (N,) integer array in ``[0, num_classes)``.
        test_features: (M, D) array.
        test_labels: (M,) integer array in ``[0, num_classes)``.
        num_classes: positive int.
        name: str, the data set's name in the keys.
        shots: int or sequence of positive ints (default 1, 5, 10, 25).
        seeds: int or sequence of non-negative ints (default 0, 1, 2, as
            big_vision's ``num_seeds=3``).
        l2_reg: positive float, the fixed ridge penalty (default 1024).
        l2_sweep: ``None`` (no sweep), ``True`` (``DEFAULT_L2_GRID``) or a
            sequence of positive floats.
        per_seed: bool, whether to include the per-seed entries.

    Returns:
        dict of str -> Python float.

    Raises:
        TypeError: an argument of the wrong kind (float shots, string labels,
            a non-bool ``per_seed``).
        ValueError: before any solve: shots < 1 or repeated, negative or
            repeated seeds, ``l2_reg <= 0`` or not finite, features that are
            not 2-D, have NaN/inf, or differ in width between train and test,
            labels outside ``[0, num_classes)`` or not one per row, a class
            without training rows.

    Example:

    >>> import numpy as np
    >>> from keras_scalevit.evaluation import fewshot_evaluate
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(3), 30)
    >>> feats = rng.normal(size=(90, 8)) + 3.0 * np.eye(3, 8)[labels]
    >>> out = fewshot_evaluate(
    ...     feats, labels, feats, labels, num_classes=3, name="toy",
    ...     shots=(1, 5), seeds=(0, 1),
    ... )
    >>> sorted(out)[:3]
    ['toy_1shot', 'toy_1shot-seed-0', 'toy_1shot-seed-1']
    """
    num_classes = _check_num_classes(num_classes)
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a non-empty str, got {name!r}.")
    if not name:
        raise ValueError("`name` must be a non-empty str, got ''.")
    shots = _check_shots(shots)
    seeds = _check_seeds(seeds)
    l2_reg = _check_l2(l2_reg)
    per_seed = check_bool("per_seed", per_seed)
    grid = None
    if l2_sweep is not None and l2_sweep is not False:
        grid = _check_l2_grid(
            DEFAULT_L2_GRID if l2_sweep is True else l2_sweep, "l2_sweep"
        )
    train_features, train_labels, test_features, _ = _check_problem(
        train_features, train_labels, test_features, num_classes
    )
    test_labels = _check_test_labels(test_labels, test_features, num_classes)
    counts = np.bincount(train_labels, minlength=num_classes)
    for k in shots:
        _warn_short_classes(counts, k)

    results = {}
    faithful = {k: [] for k in shots}
    swept = {k: [] for k in shots}
    for seed in seeds:
        perms = _class_permutations(train_labels, seed, num_classes)
        for k in shots:
            idx = np.concatenate([p[:k] for p in perms])
            x, y = train_features[idx], train_labels[idx]
            system = _RidgeSystem(x, y, num_classes)
            predictions = system.predict(test_features, system.weights(l2_reg))
            acc = float(np.mean(predictions == test_labels))
            faithful[k].append(acc)
            if per_seed:
                results[f"{name}_{k}shot-seed-{seed}"] = acc
            if grid is not None and np.max(np.bincount(y)) >= 2:
                best, _ = select_l2_reg(x, y, num_classes=num_classes, l2_grid=grid)
                predictions = system.predict(test_features, system.weights(best))
                acc = float(np.mean(predictions == test_labels))
                swept[k].append(acc)
                if per_seed:
                    results[f"{name}_{k}shot-l2sweep-seed-{seed}"] = acc
                    results[f"{name}_{k}shot-l2sweep-seed-{seed}-l2"] = best
    for k in shots:
        results[f"{name}_{k}shot"] = float(np.mean(faithful[k]))
        if swept[k]:
            results[f"{name}_{k}shot-l2sweep"] = float(np.mean(swept[k]))
    return results
