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
import difflib
import functools
import inspect

import tensorflow as tf

from keras_scalevit.utils.validation import check_kwargs

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

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"`name` must be a Python identifier (pp strings call ops by name), "
            f"got {name!r}."
        )

    def _register(factory):
        if not callable(factory):
            raise TypeError(
                f"`register_op({name!r})` decorates an op factory (a callable), "
                f"got {type(factory).__name__}."
            )
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


def check_size(name, value, allow_none=False):
    """Validates an int or an (h, w) pair of positive ints; returns (h, w).

    Example:
    >>> from keras_scalevit.data.builder import check_size
    >>> check_size("size", 16), check_size("size", (8, 12))
    ((16, 16), (8, 12))
    >>> check_size("size", (8, 0))
    Traceback (most recent call last):
    ...
    ValueError: `size` must be a positive int or a pair (height, width) of positive ints, got (8, 0).
    """
    if value is None and allow_none:
        return None
    what = "a positive int or a pair (height, width) of positive ints"
    if allow_none:
        what += ", or None"
    pair = maybe_repeat(value, 2)
    kind_ok = len(pair) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in pair
    )
    if not kind_ok:
        raise (TypeError if len(pair) == 2 else ValueError)(
            f"`{name}` must be {what}, got {value!r}."
        )
    if not all(v > 0 for v in pair):
        raise ValueError(f"`{name}` must be {what}, got {value!r}.")
    return pair


def check_key(name, value, allow_none=False):
    """Validates a feature name (a non-empty str, or None when allowed).

    Example:
    >>> from keras_scalevit.data.builder import check_key
    >>> check_key("key", "label")
    'label'
    """
    if value is None and allow_none:
        return None
    what = "a feature name (a non-empty str)" + (" or None" if allow_none else "")
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be {what}, got {value!r}.")
    if not value:
        raise ValueError(f"`{name}` must be {what}, got {value!r}.")
    return value


def feature_names(data):
    """The feature names of a features dict, without the seed key (sorted).

    Example:
    >>> from keras_scalevit.data.builder import SEED_KEY, feature_names
    >>> feature_names({"label": 1, "image": 2, SEED_KEY: 3})
    ['image', 'label']
    """
    return sorted(k for k in data if k != SEED_KEY)


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
            check_key("key", key, allow_none=True)
            check_key("inkey", inkey)
            check_key("outkey", outkey)
            fn = factory(*args, **kwargs)

            def _op(data):
                x = data[key or inkey]
                data[key or outkey] = fn(x, op_seed(data)) if random else fn(x)
                return data

            return _op

        # Keywords the wrapper adds to the factory's own (for arity checks).
        _factory.pp_extra_keywords = {"key": None, "inkey": indefault}
        _factory.pp_extra_keywords["outkey"] = outdefault
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
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(
            f"arguments of {spec!r} must be Python literals (numbers, strings, "
            "tuples, lists, dicts, True/False/None)."
        ) from None
    if any(kw.arg is None for kw in expr.keywords):
        raise ValueError(f"`**` arguments are not allowed in {spec!r}.")
    return expr.func.id, args, kwargs


def op_signature(name):
    """The call signature of a registered pp op, as text (for messages).

    Args:
        name: str, a registered op name.

    Returns:
        str such as ``"resize(size, method='bilinear', ...)"``.

    Example:
    >>> from keras_scalevit.data.builder import op_signature
    >>> op_signature("flip_lr")
    "flip_lr(key=None, inkey='image', outkey='image')"
    """
    factory = _OPS[name]
    params = [str(p) for p in inspect.signature(factory).parameters.values()]
    extra = getattr(factory, "pp_extra_keywords", {})
    params += [f"{k}={v!r}" for k, v in extra.items()]
    return f"{name}({', '.join(params)})"


def _check_call(name, factory, args, kwargs):
    """Raises TypeError (naming the op) for wrong arity or unknown keywords."""
    try:
        sig = inspect.signature(factory)  # follows functools.wraps to the factory
    except (TypeError, ValueError):  # a builtin without a signature
        return
    params = sig.parameters.values()
    extra = getattr(factory, "pp_extra_keywords", {})
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        named = [
            p.name
            for p in params
            if p.kind
            in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        check_kwargs(f"pp op {name!r}", kwargs, [*named, *extra])
    try:
        sig.bind(*args, **{k: v for k, v in kwargs.items() if k not in extra})
    except TypeError as e:
        raise TypeError(
            f"pp op {name!r} called with {len(args)} positional argument(s) and "
            f"keyword(s) {sorted(kwargs)}: {e}. Signature: {op_signature(name)}."
        ) from None


def _reraise_with_context(error, context):
    """Re-raises a TypeError/ValueError with ``context`` in front, same type."""
    kind = TypeError if isinstance(error, TypeError) else ValueError
    raise kind(f"{context}: {error}") from None


def _build_op(spec, pp_string):
    try:
        name, args, kwargs = parse_op_spec(spec)
    except ValueError as e:
        raise ValueError(f"Bad op {spec!r} in pp string {pp_string!r}: {e}") from None
    if name not in _OPS:
        close = difflib.get_close_matches(name, available_ops(), n=3, cutoff=0.6)
        hint = (
            f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        )
        raise ValueError(
            f"Unknown pp op {name!r} in pp string {pp_string!r}{hint}. "
            f"Available ops: {', '.join(available_ops())}."
        )
    factory = _OPS[name]
    context = f"Bad arguments for pp op {name!r} ({spec!r}) in pp string {pp_string!r}"
    try:
        _check_call(name, factory, args, kwargs)
        op = factory(*args, **kwargs)
    except (TypeError, ValueError) as e:
        _reraise_with_context(e, context)
    if not callable(op):
        raise TypeError(
            f"pp op {name!r}: its factory returned {type(op).__name__}, not a "
            "function of the features dict."
        )
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
        ValueError: an unknown op (with the closest names), a bad argument
            value or a spec that does not parse; the message quotes the whole
            pp string and names the op and the argument.
        TypeError: a wrong kind of argument, an unknown keyword (with the
            closest names) or a wrong number of arguments.

    Checks that depend on the data raise when an example is processed: a
    ``ValueError`` naming the op when the shapes or dtypes are known while
    tracing (a crop larger than a static image shape, a missing feature), and
    ``tf.errors.InvalidArgumentError`` naming the op from inside ``tf.data``
    otherwise (a label outside ``[0, depth)``, a crop larger than an image
    whose size is known only at run time).

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
            "`pp_string` must be a str like 'decode|resize(224)' or None, got "
            f"{type(pp_string).__name__}: {pp_string!r}."
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
                    f"{e.args[0]!r}; the features are {feature_names(data)}."
                ) from None
            except (TypeError, ValueError) as e:
                _reraise_with_context(e, f"pp op {spec!r} in pp string {pp_string!r}")
            if not isinstance(data, dict):
                raise TypeError(
                    f"pp op {spec!r} returned {type(data).__name__}, not a dict."
                )
            data.pop(SEED_KEY, None)
        return data

    return _preprocess
