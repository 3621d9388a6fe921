r"""Plan a training run before paying for it: per-device memory and step FLOPs.

``plan("G/14", batch_size=4096, mesh=(256, 1), compute_dtype="bfloat16",
remat=True)`` estimates, per device, the bytes of

- **parameters**: float32 (also under ``mixed_bfloat16``, whose variables stay
  float32), from the exact variable shapes of `ViTClassifier.from_variant`;
- **optimizer state**: from the optimizer's own slot rules: for ``"adafactor"``
  `keras_scalevit.optimizers.adafactor_state_bytes` (factored float32 ``v_row`` /
  ``v_col`` where optax factors, else a float32 ``v``; momentum in bfloat16);
  ``"momentum_hp"`` a bfloat16 momentum; ``"adam"`` two float32 moments;
  ``"sgd"`` none. Step counters and the learning rate (a few bytes) are left out;
- **gradients**: float32, one per trained parameter;
- **activations** kept for the backward pass (the model below);

and the FLOPs of one step.

Sharding model (a simple one, not the exact layouts of `keras.distribution`):
the mesh is ``(data, model)``; the batch is split over ``data``. Parameters,
gradients and optimizer state are divided by ``data`` under ``"fsdp"``, by
``model`` under ``"tensor"``, by both under ``"fsdp+tensor"`` and replicated under
``"data"``. Under the tensor strategies the width-sharded activations (queries,
keys, values, attention maps, MLP hidden) are divided by ``model``; the
residual-stream activations are replicated. Gathered parameter copies
(FSDP all-gathers) and communication buffers are not counted.

Activation model (elements kept per example, ``T`` tokens, width ``D``, MLP
``M``, ``H`` heads, ``L`` blocks), measured against XLA's buffer assignment of the
compiled Keras train step on CPU (`tests/scaling/test_scaling_plan.py`):

- per block: ``ACT_D · T·D`` (residual-stream tensors) plus ``ACT_M · T·M`` (MLP
  hidden) plus ``ACT_ATT · H·T²`` (attention logits / probabilities);
- stem and head: the image, the patch embeddings and the MAP head's keys/values.

With ``remat=True`` only each block's input (``T·D``) is kept and one block's
activations are live again during its backward pass (XLA on CPU ignores
rematerialisation in its buffer assignment, so this case is not checked against
the compiler on CPU).
"""

import argparse
import dataclasses
import math
import re
import sys

import numpy as np

from keras_scalevit.optimizers import adafactor_state_bytes
from keras_scalevit.scaling.flops import POOL_TYPES, flops_per_image, model_shape
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_int,
    check_kwargs,
    check_positive_int,
)

STRATEGIES = ("data", "fsdp", "tensor", "fsdp+tensor")
OPTIMIZERS = ("adafactor", "momentum_hp", "adam", "sgd")
COMPUTE_DTYPES = ("float32", "bfloat16")
# Activation elements per example and block, fitted by least squares (relative
# error) to XLA's CPU buffer assignment of the Keras train step on 11 configurations
# varying tokens 16-256, width, MLP, heads and depth 1-3 (jax 0.10.2; 13.90, 1.23,
# 2.83) and rounded up, so that the plan errs towards more memory than XLA takes:
# 0.97-1.24x XLA's temporaries on them (the most over: 16 tokens with a wide MLP,
# and 144 tokens with a narrow one). They are the tensors the backward pass reads
# (LayerNorm inputs and outputs, q, k, v, attention output, residuals, the MLP
# hidden, softmax) plus backward transients. `tools/fit_activation_model.py`
# measures and refits them (last: when attention on JAX began to project with 2-D
# matmuls, keeping no head-major copies of q, k, v; XLA's temporaries fell 5-30%).
ACT_D = 14
ACT_M = 2
ACT_ATT = 3
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def variable_shapes(
    variant,
    *,
    image_size=224,
    num_classes=0,
    pool_type="gap",
    rep_size=False,
    posemb="learn",
    **overrides,
):
    """The weights of ``ViTClassifier.from_variant(...)``: ``[(path, shape)]``.

    Computed from the architecture without building the model (a ViT-G/14 takes
    a minute to build on a CPU), in the order and with the names Keras uses.

    Args:
        variant: str, e.g. ``"G/14"``.
        image_size: int, square images.
        num_classes: int >= 0; 0 means no classifier head.
        pool_type: ``"gap"``, ``"map"``, ``"tok"``, ``"0"`` or ``"none"``.
        rep_size: bool or int, the pre-logits layer.
        posemb: ``"learn"`` (a weight) or ``"sincos2d"`` (fixed, no weight).
        **overrides: shape fields (``width``, ``depth``, ``mlp_dim``,
            ``num_heads``, ``patch_size``).

    Returns:
        list of ``(path, shape)`` tuples.

    Example:
    >>> from keras_scalevit.scaling.plan import variable_shapes
    >>> shapes = variable_shapes("mu/8", image_size=32, num_classes=10)
    >>> shapes[0], shapes[-1]
    (('embedding/kernel', (8, 8, 3, 32)), ('head/bias', (10,)))
    """
    image_size = check_positive_int("image_size", image_size)
    num_classes = check_int("num_classes", num_classes, minimum=0)
    pool_type = check_choice("pool_type", pool_type, POOL_TYPES)
    posemb = check_choice("posemb", posemb, ("learn", "sincos2d"))
    s = model_shape(variant, **overrides)
    d, m, h, p = s["width"], s["mlp_dim"], s["num_heads"], s["patch_size"]
    if image_size % p:
        raise ValueError(
            f"`image_size` must be a multiple of the patch size {p}, got {image_size}."
        )
    n = (image_size // p) ** 2
    out = [("embedding/kernel", (p, p, 3, d)), ("embedding/bias", (d,))]
    if posemb == "learn":
        out.append(("pos_embedding/pos_embedding", (1, n, d)))

    def attention(prefix):
        rows = []
        for proj in ("query", "key", "value"):
            rows += [
                (f"{prefix}/{proj}/kernel", (d, h, d // h)),
                (f"{prefix}/{proj}/bias", (h, d // h)),
            ]
        return rows + [
            (f"{prefix}/out/kernel", (h, d // h, d)),
            (f"{prefix}/out/bias", (d,)),
        ]

    def ln(prefix):
        return [(f"{prefix}/scale", (d,)), (f"{prefix}/bias", (d,))]

    def mlp(prefix):
        return [
            (f"{prefix}/Dense_0/kernel", (d, m)),
            (f"{prefix}/Dense_0/bias", (m,)),
            (f"{prefix}/Dense_1/kernel", (m, d)),
            (f"{prefix}/Dense_1/bias", (d,)),
        ]

    if pool_type == "tok":
        out.append(("cls/cls", (1, 1, d)))
    for i in range(s["depth"]):
        b = f"Transformer/encoderblock_{i}"
        out += ln(f"{b}/LayerNorm_0") + attention(f"{b}/MultiHeadDotProductAttention_0")
        out += ln(f"{b}/LayerNorm_1") + mlp(f"{b}/MlpBlock_0")
    out += ln("Transformer/encoder_norm")
    if pool_type == "map":
        out.append(("MAPHead_0/probe", (1, 1, d)))
        out += attention("MAPHead_0/MultiHeadDotProductAttention_0")
        out += ln("MAPHead_0/LayerNorm_0") + mlp("MAPHead_0/MlpBlock_0")
    rep = d
    if rep_size:
        rep = d if rep_size is True else int(rep_size)
        out += [("pre_logits/kernel", (d, rep)), ("pre_logits/bias", (rep,))]
    if num_classes:
        out += [("head/kernel", (rep, num_classes)), ("head/bias", (num_classes,))]
    return out


def optimizer_state_bytes(shapes, optimizer="adafactor"):
    """Bytes of an optimizer's slots for trained variables of ``shapes``.

    Args:
        shapes: iterable of variable shapes.
        optimizer: ``"adafactor"`` (the paper's: `adafactor_state_bytes`),
            ``"momentum_hp"`` (bfloat16 momentum), ``"adam"`` (two float32
            moments, Keras' Adam/AdamW) or ``"sgd"``.

    Returns:
        int.

    Example:
    >>> from keras_scalevit.scaling.plan import optimizer_state_bytes
    >>> optimizer_state_bytes([(768, 3072), (768,)])  # bf16 m + factored/full v
    4738560
    """
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    shapes = [tuple(s) for s in shapes]
    if optimizer == "adafactor":
        return adafactor_state_bytes(shapes)
    per = {"momentum_hp": 2, "adam": 8, "sgd": 0}[optimizer]
    return per * sum(int(np.prod(s, dtype=np.int64)) for s in shapes)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per-device memory and per-step FLOPs of a training run (see `plan`).

    Attributes:
        variant, batch_size, image_size, mesh, strategy, compute_dtype, remat,
            optimizer: the planned run.
        num_parameters: int, the model's parameter count.
        parameter_bytes, optimizer_bytes, gradient_bytes, activation_bytes:
            int, per device.
        total_bytes: int, their sum.
        flops_per_step: int, the whole step on all devices (forward + backward =
            3 × forward, plus one more forward of the encoder with ``remat``).
        flops_per_device_step: float, ``flops_per_step`` / number of devices.
    """

    variant: str
    batch_size: int
    image_size: int
    mesh: tuple
    strategy: str
    compute_dtype: str
    remat: bool
    optimizer: str
    num_parameters: int
    parameter_bytes: int
    optimizer_bytes: int
    gradient_bytes: int
    activation_bytes: int
    total_bytes: int
    flops_per_step: int
    flops_per_device_step: float

    def fits(self, memory_bytes):
        """Whether ``total_bytes`` fits in ``memory_bytes`` per device."""
        return self.total_bytes <= check_int("memory_bytes", memory_bytes, minimum=0)

    def __str__(self):
        gib = 2.0**30
        rows = [
            f"{self.variant} @ {self.image_size} px, batch {self.batch_size}, mesh "
            f"{self.mesh[0]}x{self.mesh[1]} ({self.strategy}), {self.compute_dtype}"
            f"{', remat' if self.remat else ''}, {self.optimizer}: "
            f"{self.num_parameters / 1e6:.1f} M parameters",
            f"  parameters   {self.parameter_bytes / gib:9.3f} GiB / device",
            f"  optimizer    {self.optimizer_bytes / gib:9.3f} GiB / device",
            f"  gradients    {self.gradient_bytes / gib:9.3f} GiB / device",
            f"  activations  {self.activation_bytes / gib:9.3f} GiB / device",
            f"  total        {self.total_bytes / gib:9.3f} GiB / device",
            f"  step FLOPs   {self.flops_per_step:.3e} "
            f"({self.flops_per_device_step:.3e} / device)",
        ]
        return "\n".join(rows)


def _mesh(mesh):
    if isinstance(mesh, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", mesh)
        if not m:
            raise ValueError(f"`mesh` must look like '256x1', got {mesh!r}.")
        mesh = (int(m.group(1)), int(m.group(2)))
    if not isinstance(mesh, (tuple, list)) or len(mesh) != 2:
        raise ValueError(f"`mesh` must be a (data, model) pair, got {mesh!r}.")
    return tuple(check_positive_int("mesh", v) for v in mesh)


def activation_elements(
    shape, *, tokens, batch, pool_type, image_size, num_classes, remat
):
    """Activation elements kept per device, split ``(replicated, width_sharded)``.

    ``shape`` is `model_shape`'s dict; ``batch`` the per-device batch.
    """
    d, m, h, depth = (
        shape["width"],
        shape["mlp_dim"],
        shape["num_heads"],
        shape["depth"],
    )
    t = tokens
    resid = ACT_D * t * d
    sharded = ACT_M * t * m + ACT_ATT * h * t * t
    # The image, patch embeddings, final LayerNorm and pooling (fitted with the
    # MAP head: 6 T·D; the other heads keep less and are not measured).
    head = image_size * image_size * 3 + (6 if pool_type == "map" else 3) * t * d
    head += 2 * num_classes
    if remat:
        rep = depth * t * d + resid
        shard = sharded
    else:
        rep = depth * resid
        shard = depth * sharded
    return batch * (rep + head), batch * shard


def plan(
    variant,
    *,
    batch_size,
    image_size=224,
    num_classes=0,
    mesh=(1, 1),
    strategy="data",
    compute_dtype="float32",
    remat=False,
    optimizer="adafactor",
    pool_type="gap",
    rep_size=False,
    posemb="learn",
    **overrides,
):
    """Per-device memory (bytes) and FLOPs of one training step.

    See the module docstring for what is counted and the sharding model. Model
    arguments default as in `ViTClassifier.from_variant`.

    Args:
        variant: str, e.g. ``"G/14"``.
        batch_size: int, the global batch; must divide evenly over ``mesh[0]``.
        image_size: int.
        num_classes: int >= 0, classifier size (0: no head).
        mesh: ``(data, model)`` ints or a string ``"256x1"``.
        strategy: ``"data"``, ``"fsdp"``, ``"tensor"`` or ``"fsdp+tensor"``.
        compute_dtype: ``"float32"`` or ``"bfloat16"`` (activations; parameters,
            gradients and optimizer statistics stay float32).
        remat: bool, per-block rematerialisation.
        optimizer: ``"adafactor"``, ``"momentum_hp"``, ``"adam"`` or ``"sgd"``.
        pool_type, rep_size, posemb: model arguments.
        **overrides: shape fields (``width``, ``depth``, ...).

    Returns:
        `Plan`.

    Example:
    >>> from keras_scalevit.scaling import plan
    >>> p = plan("B/16", batch_size=64)
    >>> p.parameter_bytes == 4 * p.num_parameters, p.fits(80 * 2**30)
    (True, True)
    """
    batch_size = check_positive_int("batch_size", batch_size)
    mesh = _mesh(mesh)
    strategy = check_choice("strategy", strategy, STRATEGIES)
    compute_dtype = check_choice("compute_dtype", compute_dtype, COMPUTE_DTYPES)
    remat = check_bool("remat", remat)
    if batch_size % mesh[0]:
        raise ValueError(
            f"`batch_size` must be divisible by the data axis of `mesh` {mesh}, "
            f"got {batch_size}."
        )
    check_kwargs(
        "plan", overrides, ("width", "depth", "mlp_dim", "num_heads", "patch_size")
    )
    shapes = [
        s
        for _, s in variable_shapes(
            variant,
            image_size=image_size,
            num_classes=num_classes,
            pool_type=pool_type,
            rep_size=rep_size,
            posemb=posemb,
            **overrides,
        )
    ]
    num_params = sum(int(np.prod(s, dtype=np.int64)) for s in shapes)
    div = {
        "data": 1,
        "fsdp": mesh[0],
        "tensor": mesh[1],
        "fsdp+tensor": mesh[0] * mesh[1],
    }[strategy]
    shape = model_shape(variant, **overrides)
    tokens = (image_size // shape["patch_size"]) ** 2 + (pool_type == "tok")
    rep, sharded = activation_elements(
        shape,
        tokens=tokens,
        batch=batch_size // mesh[0],
        pool_type=pool_type,
        image_size=image_size,
        num_classes=num_classes,
        remat=remat,
    )
    if strategy in ("tensor", "fsdp+tensor"):
        sharded = sharded / mesh[1]
    parameter_bytes = math.ceil(4 * num_params / div)
    optimizer_bytes = math.ceil(optimizer_state_bytes(shapes, optimizer) / div)
    gradient_bytes = parameter_bytes
    activation_bytes = math.ceil((rep + sharded) * _DTYPE_BYTES[compute_dtype])
    fwd = flops_per_image(
        variant,
        image_size,
        pool_type=pool_type,
        num_classes=num_classes,
        include_head=True,
        **overrides,
    )
    encoder = flops_per_image(variant, image_size, pool_type=pool_type, **overrides)
    flops = batch_size * (3 * fwd + (encoder if remat else 0))
    return Plan(
        variant=variant,
        batch_size=batch_size,
        image_size=image_size,
        mesh=mesh,
        strategy=strategy,
        compute_dtype=compute_dtype,
        remat=remat,
        optimizer=optimizer,
        num_parameters=num_params,
        parameter_bytes=parameter_bytes,
        optimizer_bytes=optimizer_bytes,
        gradient_bytes=gradient_bytes,
        activation_bytes=activation_bytes,
        total_bytes=parameter_bytes
        + optimizer_bytes
        + gradient_bytes
        + activation_bytes,
        flops_per_step=flops,
        flops_per_device_step=flops / (mesh[0] * mesh[1]),
    )


def main(argv=None):
    """Command line: ``python -m keras_scalevit.scaling.plan G/14 --batch-size 4096
    --mesh 256x1 --dtype bfloat16 --remat``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_scalevit.scaling.plan",
        description="Per-device memory and FLOPs of one training step.",
    )
    parser.add_argument("variant", help="e.g. G/14")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=0)
    parser.add_argument("--mesh", default="1x1", help="data x model, e.g. 256x1")
    parser.add_argument("--strategy", choices=STRATEGIES, default="data")
    parser.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adafactor")
    parser.add_argument("--pool-type", choices=POOL_TYPES, default="gap")
    parser.add_argument(
        "--memory-gib", type=float, default=None, help="device memory to check"
    )
    args = parser.parse_args(argv)
    result = plan(
        args.variant,
        batch_size=args.batch_size,
        image_size=args.image_size,
        num_classes=args.num_classes,
        mesh=args.mesh,
        strategy=args.strategy,
        compute_dtype=args.dtype,
        remat=args.remat,
        optimizer=args.optimizer,
        pool_type=args.pool_type,
    )
    print(result)
    if args.memory_gib is not None:
        ok = result.fits(int(args.memory_gib * 2**30))
        print(f"  fits in {args.memory_gib:g} GiB: {'yes' if ok else 'no'}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
