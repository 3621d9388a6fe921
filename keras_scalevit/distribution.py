"""Data, tensor and fully-sharded parallelism for ViTs with `keras.distribution`.

`make_distribution` turns a strategy name and a ``(data, model)`` mesh shape into
Keras' own `DataParallel` or `ModelParallel` (with `ViTClassifier.get_layout_map`);
set it with `keras.distribution.set_distribution` (or use ``with dist.scope():``)
*before* building the model and the optimizer, so each variable is created sharded
and the optimizer's state follows its variable.

`keras.distribution` is implemented for the JAX backend in Keras 3.15 (the
TensorFlow one is an unsupported DTensor prototype; torch has none).

`abstract_model` / `abstract_optimizer_state` build a model and its optimizer state
without allocating a weight, and `per_device_bytes` adds up what each device holds
under a distribution: how ViT-G/14 is shown to fit without the memory to build it.
"""

import contextlib
import math

import keras
import ml_dtypes
import numpy as np

from keras_scalevit.models.vit.vit_classifier import ViTClassifier
from keras_scalevit.utils.validation import check_bool, check_choice

STRATEGIES = ("data", "fsdp", "tensor", "fsdp+tensor")

DATA_AXIS = "batch"
MODEL_AXIS = "model"


def _check_backend(what):
    backend = keras.backend.backend()
    if backend == "jax":
        return
    detail = {
        "tensorflow": "TensorFlow's keras.distribution backend is an unsupported "
        "DTensor prototype",
        "torch": "the torch backend has no keras.distribution implementation",
    }.get(backend, f"the {backend!r} backend has no keras.distribution")
    raise RuntimeError(
        f"{what} needs the JAX backend: keras.distribution (data, tensor and "
        f"fully-sharded parallelism) is implemented for JAX only in Keras "
        f"{keras.__version__}, and {detail}. The current backend is {backend!r}; "
        "set KERAS_BACKEND=jax before importing keras (on one device every backend "
        "trains without a distribution)."
    )


def _check_mesh_shape(mesh_shape, num_devices):
    if isinstance(mesh_shape, (str, bytes)) or not isinstance(
        mesh_shape, (tuple, list)
    ):
        raise TypeError(
            "`mesh_shape` must be a (data, model) pair of ints or None, got "
            f"{mesh_shape!r}."
        )
    if len(mesh_shape) != 2 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
        for s in mesh_shape
    ):
        raise ValueError(
            "`mesh_shape` must be a (data, model) pair of ints >= 1, got "
            f"{tuple(mesh_shape)!r}."
        )
    mesh_shape = (int(mesh_shape[0]), int(mesh_shape[1]))
    if math.prod(mesh_shape) != num_devices:
        raise ValueError(
            f"`mesh_shape`={mesh_shape} holds {math.prod(mesh_shape)} devices, but "
            f"there are {num_devices}; allowed: {_factorizations(num_devices)}."
        )
    return mesh_shape


def _factorizations(n):
    return [(d, n // d) for d in range(n, 0, -1) if n % d == 0]


def make_distribution(
    strategy,
    *,
    mesh_shape=None,
    devices=None,
    model=None,
    auto_shard_dataset=True,
):
    """A `keras.distribution.Distribution` for a ViT: data, FSDP or tensor parallel.

    Strategies:
    - ``"data"``: `keras.distribution.DataParallel` on every device (weights and
      optimizer state replicated, the batch split).
    - ``"fsdp"``: `keras.distribution.ModelParallel`, a ``(n, 1)`` mesh, every big
      tensor's width sharded over the data axis (each device holds ~1/n of the
      weights and optimizer state).
    - ``"tensor"``: `ModelParallel`, heads / MLP hidden / classes on the model axis,
      the batch split over the data axis, weights replicated along it.
    - ``"fsdp+tensor"``: both.

    The layouts are `keras_scalevit.models.ViTClassifier.get_layout_map`'s (they cover
    a bare `ViTBackbone` too); the data layout splits the batch over ``"batch"``.

    Args:
        strategy: str, one of ``"data"``, ``"fsdp"``, ``"tensor"``, ``"fsdp+tensor"``.
        mesh_shape: None or ``(data, model)`` with ``data * model`` = the number of
            devices. None puts every device on the data axis (a 1-wide model axis);
            ``"data"`` and ``"fsdp"`` need a model axis of 1.
        devices: None (all of `keras.distribution.list_devices()`) or a list of
            devices / device names.
        model: None, a Keras model, or a zero-argument callable building one (it is
            built by `abstract_model`, allocating no weight). When given, every
            sharded dimension of its variables is checked against the mesh, and a
            dimension that does not divide raises a `ValueError` naming the variable,
            the dimension and the mesh axis, with the mesh shapes that would work.
        auto_shard_dataset: bool. Passed to Keras (multi-process input sharding).

    Returns:
        `keras.distribution.DataParallel` or `keras.distribution.ModelParallel`.

    Example:

    On a Colab TPU (8 cores, JAX backend), before building the model:
    ``keras.distribution.set_distribution(make_distribution("fsdp+tensor",
    mesh_shape=(4, 2), model=lambda: ViTClassifier.from_variant("B/16",
    num_classes=1000)))``. Strategies are checked first, on every backend:
    >>> from keras_scalevit.distribution import make_distribution
    >>> make_distribution("fsdp-tensor")
    Traceback (most recent call last):
    ...
    ValueError: `strategy` must be one of 'data', 'fsdp', 'tensor', 'fsdp+tensor', got 'fsdp-tensor' (did you mean 'fsdp+tensor'?).
    """
    check_choice("strategy", strategy, STRATEGIES)
    check_bool("auto_shard_dataset", auto_shard_dataset)
    _check_backend(f"make_distribution(strategy={strategy!r})")
    if devices is None:
        devices = keras.distribution.list_devices()
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` must hold at least one device, got [].")
    n = len(devices)
    if mesh_shape is None:
        mesh_shape = (n, 1)
    mesh_shape = _check_mesh_shape(mesh_shape, n)
    if strategy in ("data", "fsdp") and mesh_shape[1] != 1:
        raise ValueError(
            f"strategy={strategy!r} uses only the data axis, so `mesh_shape` must be "
            f"({n}, 1) (or None), got {mesh_shape}; for a model axis use "
            f"{'tensor' if strategy == 'data' else 'fsdp+tensor'!r}."
        )
    if strategy == "data":
        mesh = keras.distribution.DeviceMesh((n,), (DATA_AXIS,), devices)
        distribution = keras.distribution.DataParallel(
            device_mesh=mesh, auto_shard_dataset=auto_shard_dataset
        )
    else:
        mesh = keras.distribution.DeviceMesh(
            mesh_shape, (DATA_AXIS, MODEL_AXIS), devices
        )
        layout_map = ViTClassifier.get_layout_map(
            mesh,
            model_parallel_dim_name=MODEL_AXIS,
            data_parallel_dim_name=DATA_AXIS,
            fsdp=strategy in ("fsdp", "fsdp+tensor"),
        )
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map,
            batch_dim_name=DATA_AXIS,
            auto_shard_dataset=auto_shard_dataset,
        )
    if model is not None:
        if not isinstance(model, keras.Model):
            if not callable(model):
                raise TypeError(
                    "`model` must be None, a keras.Model or a callable returning "
                    f"one, got {model!r}."
                )
            model = abstract_model(model, distribution)
        check_divisibility(model.weights, distribution)
    return distribution


def _sharded_dims(variable, distribution):
    """``[(dim, size, axis names)]`` for the sharded dimensions of ``variable``."""
    layout = getattr(variable, "_layout", None)
    if not isinstance(layout, keras.distribution.TensorLayout):
        layout = distribution.get_variable_layout(variable)
    out = []
    for dim, (size, axis) in enumerate(zip(variable.shape, layout.axes, strict=True)):
        if axis is not None:
            axes = axis if isinstance(axis, (tuple, list)) else (axis,)
            out.append((dim, int(size), tuple(axes)))
    return out


def check_divisibility(variables, distribution):
    """Raises a `ValueError` if a sharded dimension does not divide its mesh axis.

    Args:
        variables: iterable of `keras.Variable` (e.g. ``model.weights``; built or
            abstract).
        distribution: a `keras.distribution.Distribution`.

    Raises:
        ValueError: naming the variables, dimensions and mesh axes that do not
            divide, with the ``(data, model)`` mesh shapes of the same device count
            that would.

    Example:
    >>> import keras
    >>> from keras_scalevit.distribution import check_divisibility
    >>> mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), ["a", "b"])
    >>> layout_map = keras.distribution.LayoutMap(mesh)
    >>> layout_map["head/kernel"] = (None, "model")
    >>> dist = keras.distribution.ModelParallel(layout_map=layout_map)
    >>> head = keras.layers.Dense(5, name="head")
    >>> head.build((None, 4))
    >>> check_divisibility(head.weights, dist)
    Traceback (most recent call last):
    ...
    ValueError: The mesh {'batch': 1, 'model': 2} does not divide 1 sharded dimension(s):
      `head/kernel` (4, 5): dimension 1 of size 5 does not divide over mesh axis 'model' of size 2
    Every sharded dimension must be a multiple of its mesh axis ('model' must divide 5). (data, model) mesh shapes of 2 devices that fit: [(2, 1)].
    """
    mesh = distribution.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    constraints, bad = [], []
    for variable in variables:
        for dim, size, axes in _sharded_dims(variable, distribution):
            constraints.append((variable.path, dim, size, axes))
            shards = math.prod(sizes[a] for a in axes)
            if size % shards:
                bad.append(
                    f"`{variable.path}` {tuple(variable.shape)}: dimension {dim} of "
                    f"size {size} does not divide over mesh axis "
                    f"{'×'.join(axes)!r} of size {shards}"
                )
    if not bad:
        return
    n = math.prod(mesh.shape)
    fits = []
    for shape in _factorizations(n):
        if len(mesh.shape) == 1:
            trial = {mesh.axis_names[0]: shape[0]} if shape[1] == 1 else None
        else:
            trial = dict(zip(mesh.axis_names, shape, strict=True))
        if trial and all(
            size % math.prod(trial[a] for a in axes) == 0
            for _, _, size, axes in constraints
        ):
            fits.append(shape)
    per_axis = {}
    for _, _, size, axes in constraints:
        if len(axes) == 1:
            per_axis[axes[0]] = math.gcd(per_axis.get(axes[0], 0), size)
    limits = ", ".join(
        f"{axis!r} must divide {g}" for axis, g in per_axis.items() if sizes[axis] > 1
    )
    raise ValueError(
        f"The mesh {dict(sizes)} does not divide {len(bad)} sharded dimension(s):\n  "
        + "\n  ".join(bad[:10])
        + ("\n  ..." if len(bad) > 10 else "")
        + f"\nEvery sharded dimension must be a multiple of its mesh axis ({limits}). "
        + (
            f"(data, model) mesh shapes of {n} devices that fit: {fits}."
            if fits
            else f"No (data, model) mesh shape of {n} devices fits this model; "
            "change the device count, or the model (e.g. pad `num_classes`)."
        )
    )


def abstract_model(builder, distribution=None):
    """Builds ``builder()`` without allocating its weights (shapes and paths only).

    The variables are created inside a `keras.StatelessScope` that does not
    initialise them; under ``distribution`` each receives the layout it would have.
    Use it to check layouts and count bytes of models too large for the host
    (``lambda: ViTClassifier.from_variant("G/14", num_classes=1000)``), not to run it.

    Args:
        builder: zero-argument callable returning a `keras.Model`.
        distribution: None or a `keras.distribution.Distribution`.

    Returns:
        The model, with uninitialised variables.

    Example:
    >>> from keras_scalevit.distribution import abstract_model
    >>> from keras_scalevit.models import ViTBackbone, count_params
    >>> model = abstract_model(lambda: ViTBackbone.from_variant("G/14"))
    >>> model.count_params() == count_params("G/14")  # 1.84 billion, not allocated
    True
    """
    with _uninitialized_scope(distribution):
        model = builder()
        if distribution is not None:
            _assign_layouts(model.weights, distribution)
    return model


@contextlib.contextmanager
def _uninitialized_scope(distribution):
    """A `keras.StatelessScope` whose variables stay uninitialised for good.

    Keras keeps variables created in such a scope in a global list and
    initialises them all when any later stateless scope closes (Keras' own
    shape inference opens one): an abstract G/14 would then be allocated, on
    the layouts' devices, by an unrelated model's build. They are taken off that
    list here.
    """
    from keras.src.backend.common import global_state

    key = "uninitialized_variables"
    before = list(global_state.get_global_attribute(key, []) or [])
    try:
        with contextlib.ExitStack() as stack:
            if distribution is not None:
                stack.enter_context(distribution.scope())
            stack.enter_context(keras.StatelessScope(initialize_variables=False))
            yield
    finally:
        global_state.set_global_attribute(key, before)


def _assign_layouts(variables, distribution):
    # What the JAX backend does when it initialises a variable under a distribution;
    # done here because abstract variables are never initialised.
    for variable in variables:
        if getattr(variable, "_layout", None) is None:
            variable._layout = distribution.get_variable_layout(variable)


def abstract_optimizer_state(optimizer, model, distribution=None):
    """Builds ``optimizer``'s state for ``model`` without allocating it.

    Args:
        optimizer: a `keras.optimizers.Optimizer`, not yet built.
        model: a model from `abstract_model` (or any built model).
        distribution: None or the distribution ``model`` was laid out with.

    Returns:
        ``optimizer.variables`` (uninitialised slots; each carries the layout the
        optimizer gave it).

    Raises:
        RuntimeError: on the TensorFlow backend, whose optimizers need initialised
            variables.

    Example:
    >>> import keras, keras_scalevit
    >>> from keras_scalevit.distribution import abstract_model, abstract_optimizer_state
    >>> model = abstract_model(lambda: keras_scalevit.models.ViTClassifier.from_variant(
    ...     "mu/8", num_classes=10, image_size=32))
    >>> optimizer = keras_scalevit.optimizers.Adafactor(1e-3)
    >>> if keras.backend.backend() != "tensorflow":  # JAX and torch
    ...     state = abstract_optimizer_state(optimizer, model)
    ...     print(sorted(v.path.split("Dense_0_kernel_")[1] for v in state
    ...                  if "MlpBlock_0_Dense_0_kernel" in v.path))
    ... else:
    ...     print(['momentum', 'v_col', 'v_row'])
    ['momentum', 'v_col', 'v_row']
    """
    if keras.backend.backend() == "tensorflow":
        raise RuntimeError(
            "abstract_optimizer_state needs the JAX (or torch) backend: TensorFlow "
            "optimizers cannot be built on uninitialised variables."
        )
    with _uninitialized_scope(distribution):
        optimizer.build(model.trainable_variables)
        if distribution is not None:
            _assign_layouts(optimizer.variables, distribution)
    return optimizer.variables


def _itemsize(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    return (
        np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    ).itemsize


def per_device_bytes(variables, distribution):
    """Bytes of ``variables`` held by each device under ``distribution``.

    Computed from shapes, dtypes and layouts (``variable._layout``, else the
    distribution's), so it works on abstract variables; a dimension sharded over
    mesh axes of total size ``k`` holds ``size / k`` elements per device.

    Args:
        variables: iterable of `keras.Variable`.
        distribution: a `keras.distribution.Distribution`.

    Returns:
        ``(per_device, total)``: ints, the bytes one device holds and the bytes of
        one copy of every variable.

    Example:
    >>> import keras
    >>> from keras_scalevit.distribution import per_device_bytes
    >>> mesh = keras.distribution.DeviceMesh((2, 1), ("batch", "model"), ["a", "b"])
    >>> layout_map = keras.distribution.LayoutMap(mesh)
    >>> layout_map["head/kernel"] = ("batch", None)
    >>> dist = keras.distribution.ModelParallel(layout_map=layout_map)
    >>> head = keras.layers.Dense(5, name="head")
    >>> head.build((None, 4))
    >>> per_device_bytes(head.weights, dist)  # kernel halved, bias replicated
    (60, 100)
    """
    mesh = distribution.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    per_device = total = 0
    for variable in variables:
        nbytes = math.prod(int(s) for s in variable.shape) * _itemsize(variable.dtype)
        shards = math.prod(
            sizes[a]
            for _, _, axes in _sharded_dims(variable, distribution)
            for a in axes
        )
        total += nbytes
        per_device += -(-nbytes // shards)
    return per_device, total


def suggest_mesh_shapes(num_devices, dims):
    """``(data, model)`` shapes of ``num_devices`` under which ``dims`` divide.

    Args:
        num_devices: int.
        dims: dict with ``"data"`` and ``"model"`` lists of dimension sizes sharded on
            each axis.

    Returns:
        list of ``(data, model)`` tuples, most data-parallel first.

    Example:
    >>> from keras_scalevit.distribution import suggest_mesh_shapes
    >>> # ViT-G/14: width 1664 = 2^7 * 13 on data, 16 heads and MLP 8192 on model.
    >>> suggest_mesh_shapes(32, {"data": [1664], "model": [16, 8192]})
    [(32, 1), (16, 2), (8, 4), (4, 8), (2, 16)]
    """
    return [
        (d, m)
        for d, m in _factorizations(num_devices)
        if all(s % d == 0 for s in dims.get("data", ()))
        and all(s % m == 0 for s in dims.get("model", ()))
    ]


__all__ = [
    "STRATEGIES",
    "abstract_model",
    "abstract_optimizer_state",
    "check_divisibility",
    "make_distribution",
    "per_device_bytes",
    "suggest_mesh_shapes",
]
