"""Does ViT-G/14 fit? The compiled train step's per-device memory, ahead of time.

Lowers and compiles the whole train step of ViT-G/14 (224 px, MAP head, JFT's 29,593
classes, the paper's Adafactor with bfloat16 momentum, ``mixed_bfloat16`` compute,
per-block remat) for a mesh of N devices without allocating a weight: the model and
optimizer state are abstract (`keras_scalevit.distribution.abstract_model`), the
inputs are `jax.ShapeDtypeStruct`s carrying the layouts' shardings, and
``jax.jit(step).lower(...).compile().memory_analysis()`` reports the bytes one device
needs. The N devices are XLA host (CPU) devices, so the figures are XLA:CPU's buffer
assignment (a TPU/GPU compiler fuses differently; read them as an estimate).

Compiling all 48 blocks on 2 CPU cores is slow, so ``--depth`` compiles fewer and
the script fits ``bytes(depth) = fixed + depth * per_block`` through two depths,
extrapolating to 48 (remat keeps one block's input per block; the rest is per-step).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax \
        python benchmarks/fit_g14.py --strategy=fsdp --mesh=8,1 --batch=8 --depths=1,2

Measured (8 host devices, 224 px, Adafactor, mixed_bfloat16, remat; depths 1 and 2
compiled, 48 extrapolated; 29,600 classes where the model axis splits the head,
JFT's 29,593 being prime to it; ~1 min per compile on 2 shared cores):

    strategy     mesh  images/shard  global  per block  fixed  G/14 peak/device
    fsdp+tensor  2x4    8             16     0.24 GiB   0.22   11.9 GiB  (16 GiB)
    fsdp+tensor  4x2    8             32     0.30 GiB   0.26   14.7 GiB  (16 GiB)
    fsdp+tensor  2x4   32             64     0.60 GiB   0.66   29.3 GiB  (32 GiB)
    fsdp+tensor  4x2   24             96     0.61 GiB   0.73   30.0 GiB  (32 GiB)
    fsdp         8x1    1              8     0.37 GiB   0.16   17.7 GiB
    fsdp         8x1   16            128     1.12 GiB   0.38   54.1 GiB

The weights and Adafactor state alone are 1.37 GiB per device on 8 devices (layouts,
no compile); the rest is XLA:CPU's working set, an upper bound: its schedule keeps
every block's gathered weights and full-size gradients alive at once (0.32 GiB per
block under pure FSDP, whatever the batch) and remat does not lower its figure
(``--no_remat``: 1.11 GiB per block at 16 images). Tensor parallelism divides both.
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

import keras_scalevit
from keras_scalevit.distribution import (
    abstract_model,
    abstract_optimizer_state,
    check_divisibility,
    make_distribution,
    per_device_bytes,
)

GIB = 2**30


def compile_step(
    strategy, mesh_shape, batch_per_device, depth, num_classes, image, remat=True
):
    dist = make_distribution(strategy, mesh_shape=mesh_shape)

    def build():
        return keras_scalevit.models.ViTClassifier.from_variant(
            "G/14",
            num_classes=num_classes,
            image_size=image,
            pool_type="map",
            depth=depth,
            remat=remat,
            dtype="mixed_bfloat16",
        )

    model = abstract_model(build, dist)
    check_divisibility(model.weights, dist)  # a clear error instead of JAX's
    optimizer = keras_scalevit.optimizers.Adafactor(
        8e-4,
        weight_decay=0.03,
        weight_decay_multipliers=[(".*head/kernel", 100.0), (".*/kernel", 1.0)],
        global_clipnorm=1.0,
    )
    opt_vars = abstract_optimizer_state(optimizer, model, dist)
    loss_fn = keras_scalevit.losses.SigmoidXent()
    trainable = model.trainable_variables
    non_trainable = model.non_trainable_variables

    def step(tv, ntv, ov, x, y):
        def loss_of(tv):
            logits, new_ntv = model.stateless_call(tv, ntv, x, training=True)
            return loss_fn(y, logits), new_ntv

        (loss, new_ntv), grads = jax.value_and_grad(loss_of, has_aux=True)(tv)
        new_tv, new_ov = optimizer.stateless_apply(ov, grads, tv)
        return loss, new_tv, new_ntv, new_ov

    def spec(v):
        layout = v._layout
        return jax.ShapeDtypeStruct(
            tuple(v.shape), v.dtype, sharding=layout.backend_layout
        )

    data_size = mesh_shape[0]
    batch = batch_per_device * data_size
    data_layout = dist.get_data_layout((batch, image, image, 3)).backend_layout
    label_layout = dist.get_data_layout((batch, num_classes)).backend_layout
    args = (
        [spec(v) for v in trainable],
        [spec(v) for v in non_trainable],
        [spec(v) for v in opt_vars],
        jax.ShapeDtypeStruct((batch, image, image, 3), "float32", sharding=data_layout),
        jax.ShapeDtypeStruct((batch, num_classes), "float32", sharding=label_layout),
    )
    shardings = jax.tree.map(lambda s: s.sharding, args[:3])
    jitted = jax.jit(
        step,
        out_shardings=(None, *shardings),
        donate_argnums=(0, 1, 2),
    )
    t0 = time.time()
    compiled = jitted.lower(*args).compile()
    seconds = time.time() - t0
    mem = compiled.memory_analysis()
    state_dev, _ = per_device_bytes(list(model.weights) + list(opt_vars), dist)
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    return {
        "depth": depth,
        "compile_s": round(seconds, 1),
        "arguments_GiB": mem.argument_size_in_bytes / GIB,
        "outputs_GiB": mem.output_size_in_bytes / GIB,
        "aliased_GiB": mem.alias_size_in_bytes / GIB,
        "temp_GiB": mem.temp_size_in_bytes / GIB,
        "peak_GiB": peak / GIB,
        "state_from_layouts_GiB": state_dev / GIB,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", default="fsdp")
    parser.add_argument("--mesh", default="8,1", help="data,model")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="images per data-axis shard (global batch = batch x data)",
    )
    parser.add_argument("--depths", default="1,2", help="two depths to compile")
    parser.add_argument("--num_classes", type=int, default=29593)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--no_remat", action="store_true", help="for comparison")
    args = parser.parse_args()
    mesh_shape = tuple(int(s) for s in args.mesh.split(","))
    depths = [int(d) for d in args.depths.split(",")]
    rows = [
        compile_step(
            args.strategy,
            mesh_shape,
            args.batch,
            d,
            args.num_classes,
            args.image_size,
            remat=not args.no_remat,
        )
        for d in depths
    ]
    for row in rows:
        print(json.dumps(row))
    if len(rows) == 2 and depths[1] != depths[0]:
        (a, b) = rows
        per_block = (b["peak_GiB"] - a["peak_GiB"]) / (depths[1] - depths[0])
        fixed = a["peak_GiB"] - depths[0] * per_block
        print(
            json.dumps(
                {
                    "strategy": args.strategy,
                    "mesh": mesh_shape,
                    "batch_per_data_shard": args.batch,
                    "remat": not args.no_remat,
                    "per_block_GiB": per_block,
                    "fixed_GiB": fixed,
                    "G14_48_blocks_peak_GiB": fixed + 48 * per_block,
                }
            )
        )


if __name__ == "__main__":
    main()
