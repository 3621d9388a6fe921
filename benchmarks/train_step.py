"""Train-step time of our ViT against keras-hub's ViT, in one process.

Both models are ViT-S/16-shaped (224 px, 1000 classes) and trained with the same
`keras.optimizers.Adam` and loss through Keras' compiled ``train_on_batch``; a third
row uses our model with the paper's `Adafactor`. Timings alternate between the
models in blocks, so a drift of the machine hits each alike; the ratio is what to
read, not the absolute milliseconds.

    pip install --no-deps keras-hub kagglehub kagglesdk tokenizers sentencepiece regex
    KERAS_BACKEND=jax python benchmarks/train_step.py --batch_size=16 --steps=10

Without keras-hub installed only our rows are measured.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_scalevit  # noqa: E402

WIDTH, DEPTH, HEADS, MLP, PATCH = 384, 12, 6, 1536, 16


def ours(image_size, num_classes):
    return keras_scalevit.models.ViTClassifier.from_variant(
        f"S/{PATCH}", num_classes=num_classes, image_size=image_size, pool_type="gap"
    )


def keras_hub_vit(image_size, num_classes):
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(image_size, image_size, 3),
        patch_size=PATCH,
        num_layers=DEPTH,
        num_heads=HEADS,
        hidden_dim=WIDTH,
        mlp_dim=MLP,
    )
    tokens = backbone.output
    logits = keras.layers.Dense(num_classes)(tokens[:, 0])
    return keras.Model(backbone.input, logits)


def adafactor():
    return keras_scalevit.optimizers.Adafactor(
        1e-3,
        weight_decay=0.03,
        weight_decay_multipliers=[(".*head/kernel", 100.0), (".*/kernel", 1.0)],
        global_clipnorm=1.0,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10, help="timed steps per block")
    p.add_argument("--blocks", type=int, default=3)
    args = p.parse_args()

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.batch_size, args.image_size, args.image_size, 3))
    x = x.astype("float32")
    y = np.eye(1000, dtype="float32")[rng.integers(0, 1000, args.batch_size)]
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    jit = keras.backend.backend() != "torch"

    runs = {"keras_scalevit ViT-S/16, Adam": (ours, keras.optimizers.Adam)}
    try:
        import keras_hub  # noqa: F401

        runs["keras-hub ViT-S/16, Adam"] = (keras_hub_vit, keras.optimizers.Adam)
    except ImportError:
        print("keras-hub not installed: measuring our models only.")
    runs["keras_scalevit ViT-S/16, Adafactor (paper)"] = (ours, adafactor)

    models = {}
    for name, (build, make_opt) in runs.items():
        model = build(args.image_size, 1000)
        model.compile(optimizer=make_opt(), loss=loss, jit_compile=jit)
        for _ in range(2):  # compile + warm up
            model.train_on_batch(x, y)
        models[name] = model

    times = {name: [] for name in models}
    for block in range(args.blocks):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / args.steps)
        print(f"block {block + 1}/{args.blocks} done", flush=True)

    base = statistics.median(times[next(iter(times))])
    print(
        f"\nbackend={keras.backend.backend()} batch={args.batch_size} "
        f"image={args.image_size}px steps={args.steps}x{args.blocks}"
    )
    print(f"{'model':45s} {'ms/step (median)':>17s} {'vs ours':>8s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:45s} {1e3 * med:17.1f} {med / base:8.2f}x")


if __name__ == "__main__":
    main()
