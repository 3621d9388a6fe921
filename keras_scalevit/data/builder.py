"""The preprocessing mini-language: an op registry and the pp-string parser.

A pp string is ``op1(args)|op2|...`` as in big_vision; each op maps a features
dict of ``tf`` tensors to a features dict. Arguments are Python literals parsed
with ``ast.literal_eval`` (never ``eval``).

Random ops are stateless: they draw from a per-example seed stored under
``SEED_KEY`` in the features dict (``make_dataset`` puts it there). The
function returned by ``get_preprocess_fn`` derives a distinct seed for every
op from it, so a pipeline gives the same output for the same example seed on
every run, in any order and under any parallelism.
"""

import ast
import functools

import tensorflow as tf

# Features-dict key holding the per-example stateless seed (int64 shape [2]).
SEED_KEY = "_seed"

_OPS = {}


def register_op(name):
    """Registers a pp-op factory under ``name`` (decorator).

    A factory takes the op's arguments and returns a function from a features
    dict to a features dict.

    Args:
        name: str, the op name used in pp strings.

    Returns:
        A decorator that registers and returns the factory unchanged.

    Example:
    >>> from keras_scalevit.data import get_preprocess_fn, register_op
    >>> @register_op("times_two_demo")
    ... def get_times_two(key="x"):
    ...     def _op(data):
    ...         data[key] = data[key] * 2
    ...         return data
    ...     return _op
    >>> int(get_preprocess_fn("times_two_demo")({"x": 3})["x"])
    6
    """

    def _register(factory):
        old = _OPS.get(name)
        # Re-running the same definition (a notebook cell) replaces it.
        same = old is not None and (old.__module__, old.__qualname__) == (
            factory.__module__,
            factory.__qualname__,
        )
        if old is not None and not same:
            raise ValueError(
                f"pp op {name!r} is already registered (by {old.__module__}."
                f"{old.__qualname__}); choose another name."
            )
        _OPS[name] = factory
        return factory

    return _register


def available_ops():
    """Sorted names of all registered pp ops.

    Returns:
        list of str.

    Example:
    >>> from keras_scalevit.data import available_ops
    >>> "inception_crop" in available_ops()
    True
    """
    return sorted(_OPS)


def maybe_repeat(value, n):
    """Returns ``value`` as an ``n``-tuple when it is a scalar.

    Example:
    >>> from keras_scalevit.data.builder import maybe_repeat
    >>> maybe_repeat(4, 2), maybe_repeat([3, 5], 2)
    ((4, 4), (3, 5))
    """
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,) * n


def check_positive_int(name, value, allow_none=False):
    """Validates an int argument > 0 (bools are rejected).

    Example:
    >>> from keras_scalevit.data.builder import check_positive_int
    >>> check_positive_int("depth", 10)
    10
    >>> try:
    ...     check_positive_int("depth", 0)
    ... except ValueError as e:
    ...     print(e)
    `depth` must be a positive int, received depth=0.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        allowed = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"`{name}` must be {allowed}, received {name}={value!r}.")
    return value


def check_size(name, value, allow_none=False):
    """Validates an int or an (h, w) pair of positive ints; returns (h, w).

    Example:
    >>> from keras_scalevit.data.builder import check_size
    >>> check_size("size", 16), check_size("size", (8, 12))
    ((16, 16), (8, 12))
    """
    if value is None and allow_none:
        return None
    pair = maybe_repeat(value, 2)
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise ValueError(
            f"`{name}` must be a positive int or a pair (height, width) of positive "
            f"ints, received {name}={value!r}."
        )
    return pair


def check_number(name, value):
    """Validates a real number (bools are rejected).

    Example:
    >>> from keras_scalevit.data.builder import check_number
    >>> check_number("vmin", -1.5)
    -1.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number, received {name}={value!r}.")
    return value


def op_seed(data):
    """The stateless seed a random op should use for this example.

    Inside ``get_preprocess_fn`` each op sees its own seed derived from the
    example's seed. Without a seed (a features dict built by hand), a fresh
    one is drawn from TF's global generator, so results then vary per call as
    in big_vision.

    Args:
        data: the features dict passed to the op.

    Returns:
        int tensor of shape [2], usable as ``seed=`` of ``tf.random.stateless_*``.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data.builder import SEED_KEY, op_seed
    >>> op_seed({SEED_KEY: tf.constant([1, 2])}).numpy().tolist()
    [1, 2]
    >>> op_seed({}).shape.as_list()
    [2]
    """
    if SEED_KEY in data:
        return data[SEED_KEY]
    return tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)


def in_key_out_key(indefault="image", outdefault="image", random=False):
    """Adds big_vision's ``key``/``inkey``/``outkey`` arguments to a factory.

    The decorated factory returns ``fn(x)`` (or ``fn(x, seed)`` when
    ``random``) acting on one tensor; the wrapper reads ``data[key or inkey]``
    and writes ``data[key or outkey]``.

    Args:
        indefault: default input key.
        outdefault: default output key.
        random: whether the tensor function takes a stateless seed.

    Returns:
        A decorator for op factories.

    Example:
    >>> import tensorflow as tf
    >>> from keras_scalevit.data.builder import in_key_out_key
    >>> @in_key_out_key()
    ... def get_negate():
    ...     return lambda x: -x
    >>> op = get_negate(inkey="x", outkey="y")
    >>> op({"x": tf.constant(2)})["y"].numpy().item()
    -2
    """

    def _decorate(factory):
        @functools.wraps(factory)
        def _factory(*args, key=None, inkey=indefault, outkey=outdefault, **kwargs):
            for name, value in (("key", key), ("inkey", inkey), ("outkey", outkey)):
                if value is not None and not isinstance(value, str):
                    raise ValueError(
                        f"`{name}` must be a string, received {name}={value!r}."
                    )
            fn = factory(*args, **kwargs)

            def _op(data):
                x = data[key or inkey]
                data[key or outkey] = fn(x, op_seed(data)) if random else fn(x)
                return data

            return _op

        return _factory

    return _decorate


def split_pp_string(pp_string):
    """Splits a pp string at top-level ``|`` (not inside quotes or brackets).

    Args:
        pp_string: str.

    Returns:
        list of non-empty, stripped op specs.

    Example:
    >>> from keras_scalevit.data.builder import split_pp_string
    >>> split_pp_string("decode|keep('a|b', 'c')|")
    ['decode', "keep('a|b', 'c')"]
    """
    specs, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(pp_string):
        if quote:
            if ch == quote and pp_string[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            specs.append(pp_string[start:i])
            start = i + 1
    specs.append(pp_string[start:])
    return [s.strip() for s in specs if s.strip()]


def parse_op_spec(spec):
    """Parses ``name`` or ``name(arg, ..., kw=value)`` with literal arguments.

    Args:
        spec: str, one op of a pp string.

    Returns:
        ``(name, args_tuple, kwargs_dict)``.

    Raises:
        ValueError: the spec is not a name or a call with literal arguments.

    Example:
    >>> from keras_scalevit.data.builder import parse_op_spec
    >>> parse_op_spec("resize(16, method='area')")
    ('resize', (16,), {'method': 'area'})
    """
    try:
        expr = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"cannot parse {spec!r}: {e.msg}") from None
    if isinstance(expr, ast.Name):
        return expr.id, (), {}
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)):
        raise ValueError(f"{spec!r} is not an op name or an op call like `name(...)`.")
    try:
        args = tuple(ast.literal_eval(a) for a in expr.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in expr.keywords}
    except ValueError:
        raise ValueError(
            f"arguments of {spec!r} must be Python literals (numbers, strings, "
            "tuples, lists, dicts, True/False/None)."
        ) from None
    if any(kw.arg is None for kw in expr.keywords):
        raise ValueError(f"`**` arguments are not allowed in {spec!r}.")
    return expr.func.id, args, kwargs


def _build_op(spec, pp_string):
    try:
        name, args, kwargs = parse_op_spec(spec)
    except ValueError as e:
        raise ValueError(f"Bad op {spec!r} in pp string {pp_string!r}: {e}") from None
    if name not in _OPS:
        raise ValueError(
            f"Unknown pp op {name!r} in pp string {pp_string!r}. "
            f"Available ops: {', '.join(available_ops())}."
        )
    factory = _OPS[name]
    try:
        op = factory(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Bad arguments for pp op {name!r} ({spec!r}) in pp string "
            f"{pp_string!r}: {e}"
        ) from None
    return name, op


def get_preprocess_fn(pp_string):
    """Builds the preprocessing function described by a big_vision pp string.

    Ops run left to right on a features dict of ``tf`` tensors (inside
    ``tf.data.Dataset.map`` or eagerly). Random ops take their randomness from
    the stateless seed under ``SEED_KEY`` (one distinct seed per op), which is
    removed from the output.

    Args:
        pp_string: str, ``"op1(args)|op2|..."``; empty or None gives identity.

    Returns:
        A function ``features dict -> features dict``.

    Raises:
        ValueError: an unknown op or bad arguments; the message quotes the
            whole pp string and names the op.

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.data import get_preprocess_fn
    >>> pp = get_preprocess_fn("resize(4)|value_range(-1, 1)|onehot(10, key='label')")
    >>> out = pp({"image": np.zeros((8, 8, 3), np.uint8), "label": 3})
    >>> out["image"].shape.as_list(), out["label"].numpy().argmax()
    ([4, 4, 3], np.int64(3))
    """
    if pp_string is not None and not isinstance(pp_string, str):
        raise TypeError(
            f"`pp_string` must be a str, received {type(pp_string).__name__}: "
            f"{pp_string!r}."
        )
    specs = split_pp_string(pp_string or "")
    ops = [(spec, *_build_op(spec, pp_string)) for spec in specs]

    def _preprocess(data):
        if not isinstance(data, dict):
            raise TypeError(
                f"The preprocessing function for {pp_string!r} takes a dict of "
                f"features, received {type(data).__name__}."
            )
        data = dict(data)
        seed = data.pop(SEED_KEY, None)
        if seed is not None:
            seed = tf.cast(seed, tf.int64)
        for i, (spec, name, op) in enumerate(ops):
            if seed is not None:
                data[SEED_KEY] = tf.random.experimental.stateless_fold_in(seed, i)
            try:
                with tf.name_scope(name):
                    data = op(data)
            except KeyError as e:
                # ValueError: autograph (tf.data) keeps its type and message.
                raise ValueError(
                    f"pp op {spec!r} in pp string {pp_string!r} needs feature "
                    f"{e.args[0]!r}; the features are {sorted(data)}."
                ) from None
            if not isinstance(data, dict):
                raise TypeError(
                    f"pp op {spec!r} returned {type(data).__name__}, not a dict."
                )
            data.pop(SEED_KEY, None)
        return data

    return _preprocess
