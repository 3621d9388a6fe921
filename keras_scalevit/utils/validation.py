"""One small vocabulary for checking public arguments.

Every check raises at construction time, before any work, with a message of the
form ``"`<argument>` must be <what>, got <value>."``: ``TypeError`` when the kind
of value is wrong (a string where a number belongs, an unknown keyword), and
``ValueError`` when the kind is right but the value is not allowed. Each returns
the value, normalised (a Python ``int`` / ``float``), so callers can write
``self.depth = check_int("depth", depth, minimum=1)``.
"""

import difflib
import math
import numbers

import numpy as np


def _fmt(value):
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(name, what, value, error=ValueError):
    raise error(f"`{name}` must be {what}, got {_fmt(value)}.")


def _bounds_text(minimum, maximum, min_inclusive, max_inclusive):
    parts = []
    if minimum is not None:
        parts.append(f"{'>=' if min_inclusive else '>'} {minimum}")
    if maximum is not None:
        parts.append(f"{'<=' if max_inclusive else '<'} {maximum}")
    return " and ".join(parts)


def check_int(name, value, *, minimum=None, maximum=None):
    """An integer (not a bool) within ``[minimum, maximum]``; returns ``int``.

    Example:
    >>> from keras_scalevit.utils.validation import check_int
    >>> check_int("depth", 12, minimum=1)
    12
    >>> check_int("depth", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `depth` must be an integer >= 1, got 0.
    """
    bounds = _bounds_text(minimum, maximum, True, True)
    what = "an integer" + (f" {bounds}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 3.0 is accepted as 3, as Python's range() would not
        else:
            _fail(name, what, value, TypeError)
    value = int(value)
    if (minimum is not None and value < minimum) or (
        maximum is not None and value > maximum
    ):
        _fail(name, what, value)
    return value


def check_positive_int(name, value):
    """An integer >= 1."""
    return check_int(name, value, minimum=1)


def check_float(
    name,
    value,
    *,
    minimum=None,
    maximum=None,
    min_inclusive=True,
    max_inclusive=True,
):
    """A finite real number within the given bounds; returns ``float``.

    Example:
    >>> from keras_scalevit.utils.validation import check_float
    >>> check_float("momentum", 0.9, minimum=0, maximum=1, max_inclusive=False)
    0.9
    >>> check_float("learning_rate", float("nan"), minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: `learning_rate` must be a finite number >= 0, got nan.
    """
    bounds = _bounds_text(minimum, maximum, min_inclusive, max_inclusive)
    what = "a finite number" + (f" {bounds}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        else:
            _fail(name, what, value, TypeError)
    value = float(value)
    bad = not math.isfinite(value)
    if minimum is not None:
        bad |= value < minimum if min_inclusive else value <= minimum
    if maximum is not None:
        bad |= value > maximum if max_inclusive else value >= maximum
    if bad:
        _fail(name, what, value)
    return value


def check_positive_float(name, value):
    """A finite number > 0."""
    return check_float(name, value, minimum=0, min_inclusive=False)


def check_non_negative_float(name, value):
    """A finite number >= 0."""
    return check_float(name, value, minimum=0)


def check_probability(name, value, *, allow_one=False):
    """A finite number in ``[0, 1)`` (``[0, 1]`` with ``allow_one``)."""
    return check_float(name, value, minimum=0, maximum=1, max_inclusive=allow_one)


def check_bool(name, value):
    """``True`` or ``False`` (also NumPy booleans); returns ``bool``."""
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, "True or False", value, TypeError)
    return bool(value)


def check_choice(name, value, allowed):
    """One of ``allowed``; the message lists them and the closest match.

    Example:
    >>> from keras_scalevit.utils.validation import check_choice
    >>> check_choice("pool_type", "mapp", ("gap", "map", "tok"))
    Traceback (most recent call last):
    ...
    ValueError: `pool_type` must be one of 'gap', 'map', 'tok', got 'mapp' (did you mean 'map'?).
    """
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:  # unhashable
        ok = False
    if ok:
        return value
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    listed = ", ".join(repr(a) for a in allowed)
    raise ValueError(f"`{name}` must be one of {listed}, got {_fmt(value)}{hint}.")


def check_kwargs(where, kwargs, allowed):
    """Raises ``TypeError`` naming every unknown keyword and its close matches.

    Args:
        where: str. The callable's name for the message (``"ViTBackbone"``).
        kwargs: dict of the keywords received.
        allowed: iterable of the accepted keyword names.

    Example:
    >>> from keras_scalevit.utils.validation import check_kwargs
    >>> check_kwargs("ViTBackbone", {"widht": 64}, ["width", "depth"])
    Traceback (most recent call last):
    ...
    TypeError: ViTBackbone got an unexpected keyword argument 'widht' (did you mean 'width'?). Allowed: 'depth', 'width'.
    """
    allowed = sorted(set(allowed))
    unknown = [k for k in kwargs if k not in allowed]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=2, cutoff=0.6)
        hint = (
            f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        )
        parts.append(f"{key!r}{hint}")
    noun = "keyword argument" if len(unknown) == 1 else "keyword arguments"
    listed = ", ".join(repr(a) for a in allowed)
    raise TypeError(
        f"{where} got an unexpected {noun} {', '.join(parts)}. Allowed: {listed}."
    )


def check_shape(name, shape, expected, *, what=None):
    """``shape`` matches ``expected``, where ``None`` in ``expected`` is any size.

    Args:
        name: str. The argument whose shape is checked.
        shape: the received shape (tuple, list or an array's ``.shape``).
        expected: tuple of ints or ``None``; its length is the required rank.
        what: optional str explaining where ``expected`` comes from
            (``"the logits' shape (4, 10)"``).

    Example:
    >>> from keras_scalevit.utils.validation import check_shape
    >>> check_shape("labels", (4, 1), (4, 10), what="the shape of `logits`")
    Traceback (most recent call last):
    ...
    ValueError: `labels` must have shape (4, 10) (the shape of `logits`), got shape (4, 1).
    """
    shape = tuple(None if d is None else int(d) for d in shape)
    expected = tuple(expected)
    ok = len(shape) == len(expected) and all(
        e is None or s is None or s == e for s, e in zip(shape, expected, strict=False)
    )
    if not ok:
        shown = "(" + ", ".join("?" if e is None else str(e) for e in expected)
        shown += ",)" if len(expected) == 1 else ")"
        source = f" ({what})" if what else ""
        raise ValueError(
            f"`{name}` must have shape {shown}{source}, got shape {shape}."
        )
    return shape
