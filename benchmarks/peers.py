"""Our ViT against its peers: train-step and inference time, and XLA's compiled cost.

One worker process per framework (ours on each Keras backend, big_vision's Flax ViT,
timm's ViT, keras-hub's ViT); the parent runs the items in interleaved rounds, one
worker at a time, so a drift of the machine hits every framework alike, and reports
each framework's median time relative to a reference (big_vision when present).
Each round also pairs a framework with the reference: the median of those per-round
ratios comes with a distribution-free interval (``median_interval``), so a run says
whether a ratio is settled (e.g. "<= 0.95x": the whole interval below 0.95) or lies
within the spread of the machine. ``--frameworks=big_vision,big_vision@2,...`` adds a
control: a second big_vision worker, the same program in another process, whose
paired ratio to the first is what the host alone makes of two equal programs.

big_vision and timm compute the same model as ours: the refined ViT without a class
token, with the tanh-approximated GELU of big_vision's MLP (Flax's default). ``timm``
is built that way (``act_layer=GELUTanh``); ``timm-erf`` is timm's ViT with its
default exact (erf) GELU, a different function, kept for reference: torch's CPU kernel
for the tanh GELU is ~4x slower than its erf kernel (2.1 vs 0.5 ms forward on a
ViT-S/16 b8 MLP activation, 2 cores). End to end, in two runs on 2 Intel cores,
``timm-erf``'s B/16 inference was 1-6% faster than ``timm``'s and its train step
differed by less than the rounds' spread. keras-hub's ``ViTBackbone`` is its own ViT:
a class token, with the head on that token.

Each Keras model is compiled as ``compile()`` gives it by default (``jit_compile="auto"``):
XLA on JAX, TensorFlow graph mode on a CPU-only machine (XLA with an accelerator), eager
on torch (``--torch-compile`` asks for ``torch.compile``). ``ours-tensorflow`` runs with
TensorFlow's own kernel choice (oneDNN on the AVX-512 Intel Xeons measured; Eigen on an
AVX2-only AMD EPYC, where TensorFlow 2.21 leaves oneDNN off); ``ours-tensorflow-eigen``
turns oneDNN off and ``ours-tensorflow-onednn`` on (``TF_ENABLE_ONEDNN_OPTS=0`` / ``1``);
``ours-tensorflow-xla`` is compiled with ``jit_compile=True`` (XLA, as TensorFlow runs
on a GPU or TPU).

Each round also records the worker's minor page faults per step (a fresh page from
the kernel, zeroed on first touch; results.md tables their medians). XLA's CPU runtime
takes fresh pages for its buffers on every step: ~260k per ViT-S/16 b8 train step,
for ours on JAX and big_vision alike, ~0.4 s of kernel time across the 2 cores. torch
takes them for every buffer glibc serves by ``mmap`` (above 32 MB at most) and after
glibc trims its heap: ~400-600k per B/16 b32 batch (ours and timm), 0-120k per S/16
step. ``--hugepages`` starts every worker with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(glibc >= 2.35: malloc asks for transparent huge pages; XLA's faults fall to ~800 and
both JAX steps run ~10% faster); ``--glibc-tunables`` sets others, e.g.
``glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184``
(malloc keeps what it frees: most of torch's b32 faults go). ``--keep-host-memory``
has every worker call `keras_scalevit.utils.keep_host_memory` before its framework
loads (the same from inside Python, where a notebook cannot set ``GLIBC_TUNABLES``).

Every worker stays resident with all its items built: the full run (seven frameworks,
five items) needed more than 24 GB on a 2-core machine, where the out-of-memory killer
took a worker (the run goes on without it); pass fewer ``--items`` or ``--frameworks``.

Items (224 px, 1000 classes, float32):

- ``train_s16_adamw_gap``: ViT-S/16 train step, batch 8, AdamW, global average pool.
- ``train_s16_adafactor_gap`` / ``train_s16_adafactor_map``: the same with the
  paper's Adafactor (bf16 momentum, factored second moment, β2 cap 0.999,
  decoupled weight decay, global-norm clipping at 1), GAP or MAP head. Each
  framework uses its own implementation (ours: `keras_scalevit.optimizers.Adafactor`;
  big_vision: ``big_vision.optax.scale_by_adafactor``; timm: ``AdafactorBigVision``).
- ``infer_b16_b8`` / ``infer_b16_b32``: ViT-B/16 forward, batch 8 / 32.
- ``matmul_b16_mlp``: each framework's own float32 matmul kernel on the shape of
  ViT-B/16's first MLP matmul at batch 8, ``(1568, 768) @ (768, 3072)``, in
  GFLOP/s. Ours and a peer on one framework share that kernel: the row shows which
  part of a model's ratio is the framework's kernels on this CPU.

For every XLA step (ours on JAX and on TensorFlow with XLA, big_vision, keras-hub on
JAX) it also reports what XLA compiled: FLOPs and bytes accessed (``cost_analysis()``;
for TensorFlow, jaxlib's cost analysis of TensorFlow's optimised HLO module) and the
largest fusion (instructions in the optimised HLO). Outputs ``results.json``,
``results.md`` (the tables) and ``results.png`` (a bar chart) in ``--out``.

Peers are optional (``pip install -e ".[bench]"``): big_vision needs flax, optax and
a checkout of google-research/big_vision given by ``--big-vision-dir`` or the
``BIG_VISION_DIR`` environment variable; timm needs timm (and a torchvision that
matches the installed torch; ``--python timm=/venv/bin/python`` runs its worker in
another environment, e.g. one with a torch/torchvision pair); keras-hub needs
keras-hub. A missing peer is skipped with a message.

    python benchmarks/peers.py --big-vision-dir=/path/to/big_vision   # full run
    python benchmarks/peers.py --quick       # one tiny item per framework, ~1-2 min
    python benchmarks/peers.py --gpu         # bf16 ViT-L/16 train step and MFU

``--gpu`` times a bfloat16 ViT-L/16 train step (batch 32, Adafactor) and reports the
model FLOP utilisation against the matmul peak each framework measures on the device
(a large bf16 matmul); it needs an accelerator.
"""

import argparse
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

FRAMEWORKS = (
    "big_vision",
    "ours-jax",
    "ours-tensorflow",
    "ours-torch",
    "ours-tensorflow-eigen",
    "ours-tensorflow-onednn",
    "ours-tensorflow-xla",
    "timm",
    "timm-erf",
    "keras-hub",
)
# width, depth, heads, mlp_dim (big_vision's variants).
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
}


def _train(variant, batch, opt, pool, image=224, dtype="float32"):
    return dict(
        kind="train", variant=variant, batch=batch, opt=opt, pool=pool, image=image,
        dtype=dtype,
    )  # fmt: skip


def _infer(variant, batch, image=224, dtype="float32"):
    return dict(
        kind="infer", variant=variant, batch=batch, pool="gap", image=image, dtype=dtype
    )


def _matmul(m, k, n):
    return dict(kind="matmul", shape=(m, k, n))


ITEMS = {
    "train_s16_adamw_gap": _train("S/16", 8, "adamw", "gap"),
    "train_s16_adafactor_gap": _train("S/16", 8, "adafactor", "gap"),
    "train_s16_adafactor_map": _train("S/16", 8, "adafactor", "map"),
    "infer_b16_b8": _infer("B/16", 8),
    "infer_b16_b32": _infer("B/16", 32),
    "matmul_b16_mlp": _matmul(8 * 196, 768, 3072),
}
QUICK_ITEMS = {"train_ti16_64px_adamw_gap": _train("Ti/16", 2, "adamw", "gap", 64)}
GPU_ITEMS = {"train_l16_bf16_adafactor": _train("L/16", 32, "adafactor", "gap", 224, "bfloat16")}  # fmt: skip

LR, WD, CLIP = 1e-3, 1e-4, 1.0


class Skip(Exception):
    """A framework or item that cannot run here (missing package, unsupported head)."""


def _dims(variant):
    name, patch = variant.split("/")
    return (*VARIANTS[name], int(patch))


def forward_flops(item):
    """Matmul FLOPs of one forward pass (2 per multiply-add), for MFU."""
    width, depth, _, mlp, patch = _dims(item["variant"])
    tokens = (item["image"] // patch) ** 2
    per_token = 2 * (
        patch * patch * 3 * width + depth * (4 * width**2 + 2 * width * mlp)
    )
    attention = depth * 2 * 2 * tokens * tokens * width
    head = 2 * width * 1000
    return item["batch"] * (tokens * per_token + attention + head)


# ----------------------------------------------------------------------------- workers


def _matmul_step(framework, a, b, dtype="float32"):
    """A step computing ``a @ b`` (numpy operands, cast to ``dtype``) with the
    framework's own kernel, as its models run it: XLA on JAX; on TensorFlow graph
    mode (oneDNN, or Eigen) on a CPU, XLA with an accelerator or for
    ``ours-tensorflow-xla`` (Keras' ``jit_compile="auto"``); torch's ``mm`` on its
    GPU when there is one. Each call returns the product once it is computed."""
    if framework in ("big_vision", "ours-jax", "keras-hub"):
        import jax
        import jax.numpy as jnp

        a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
        mm = jax.jit(lambda a, b: a @ b)
        return lambda: mm(a, b).block_until_ready()
    if framework.startswith("ours-tensorflow"):
        import tensorflow as tf

        a, b = (tf.cast(tf.constant(t), dtype) for t in (a, b))
        gpu = bool(tf.config.list_physical_devices("GPU"))
        xla = gpu or framework == "ours-tensorflow-xla"
        mm = tf.function(tf.linalg.matmul, jit_compile=xla)

        def step():
            out = mm(a, b)  # on a CPU it returns once computed
            if gpu:
                tf.test.experimental.sync_devices()
            return out

        return step
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.from_numpy(t).to(device, getattr(torch, dtype)) for t in (a, b))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        out = torch.mm(a, b)
        sync()
        return out

    return step


def _matmul_runner(framework, item):
    """The framework's own float32 matmul kernel on ``item["shape"]`` ``(m, k, n)``.

    The same kernel serves ours and a peer on one framework, so this row tells which
    part of a model's ratio is the framework's kernels on this CPU. The operands are
    standard normal, drawn from seed 0 (``a`` first); a step returns the product.
    """
    import numpy as np

    m, k, n = item["shape"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    step = _matmul_step(framework, a, b)
    step()
    return step, {}


def fusion_sizes(hlo_text):
    """Instruction count of every fused computation in optimised HLO text."""
    sizes, count = [], None
    for line in hlo_text.splitlines():
        if count is None:
            head = line.split("(")[0]
            if line[:1] not in (" ", "") and "{" in line and "fus" in head:
                count = 0
        elif line.startswith("}"):
            sizes.append(count)
            count = None
        elif line.strip():
            count += 1
    return sizes


def _fusion_stats(hlo_text):
    """Number of fusions and instructions in the largest one, from optimised HLO."""
    sizes = fusion_sizes(hlo_text)
    return {"fusions": len(sizes), "largest_fusion": max(sizes, default=0)}


def _cost_record(cost, hlo_text):
    """FLOPs and bytes of an XLA cost analysis, with the fusion sizes of its HLO."""
    return {
        "flops": float(cost.get("flops", 0.0)),
        "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        **_fusion_stats(hlo_text),
    }


def _jax_cost(jitted, *args):
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return _cost_record(cost, compiled.as_text())


def _tf_cost(function, *args):
    """`_jax_cost` of a ``tf.function(jit_compile=True)``: TensorFlow's optimised HLO,
    costed by jaxlib's XLA (TensorFlow has no cost-analysis API)."""
    import jax
    import jaxlib._hlo
    from jax._src.lib import xla_client

    hlo = function.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    module = jaxlib._hlo.hlo_module_from_text(hlo)
    client = jax.devices("cpu")[0].client
    cost = xla_client._xla.hlo_module_cost_analysis(client, module)
    return _cost_record(cost, hlo)


def _data(item, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n, size = item["batch"], item["image"]
    x = rng.uniform(-1, 1, (n, size, size, 3)).astype("float32")
    labels = rng.integers(0, 1000, n)
    return x, np.eye(1000, dtype="float32")[labels], labels


def _keras_runner(framework, item, torch_compile=False):
    import keras

    backend = keras.backend.backend()
    width, depth, heads, mlp, patch = _dims(item["variant"])
    dtype = "mixed_bfloat16" if item["dtype"] == "bfloat16" else "float32"
    if framework == "keras-hub":
        try:
            import keras_hub
        except ImportError as e:
            raise Skip(f"keras-hub not installed ({e})") from e
        if item["pool"] != "gap":
            raise Skip("keras-hub's ViTBackbone has no MAP head")
        backbone = keras_hub.models.ViTBackbone(
            image_shape=(item["image"], item["image"], 3),
            patch_size=patch,
            num_layers=depth,
            num_heads=heads,
            hidden_dim=width,
            mlp_dim=mlp,
            dtype=dtype,
        )
        logits = keras.layers.Dense(1000, dtype="float32")(backbone.output[:, 0])
        model = keras.Model(backbone.input, logits)
    else:
        import keras_scalevit

        model = keras_scalevit.models.ViTClassifier.from_variant(
            item["variant"],
            num_classes=1000,
            image_size=item["image"],
            pool_type=item["pool"],
            dtype=dtype,
        )
    x, y, _ = _data(item)
    x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    info = {}
    if backend == "tensorflow":
        from tensorflow.python.util import _pywrap_util_port

        info["tf_onednn"] = bool(_pywrap_util_port.IsMklEnabled())
    if backend == "torch":
        import torch

        info["torch"] = torch.__version__
    # What a user gets from `compile()`: Keras' "auto" is XLA on JAX (and on
    # TensorFlow with an accelerator), TensorFlow graph mode on a CPU-only machine,
    # eager on torch; --torch-compile asks for torch.compile, ours-tensorflow-xla XLA.
    xla = framework == "ours-tensorflow-xla"
    jit = True if xla or (torch_compile and backend == "torch") else "auto"
    if item["kind"] == "train":
        if item["opt"] == "adamw":
            opt = keras.optimizers.AdamW(LR, weight_decay=WD)
        else:
            import keras_scalevit

            opt = keras_scalevit.optimizers.Adafactor(
                LR, weight_decay=WD, global_clipnorm=CLIP
            )
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=opt, loss=loss, jit_compile=jit)
        info["jit_compile"] = bool(model.jit_compile)

        def step():
            model.train_on_batch(x, y)

        step()
        if backend == "jax":
            import jax

            state = (
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                [v.value for v in model.optimizer.variables],
                [v.value for v in model.metrics_variables],
            )
            info["hlo"] = _jax_cost(jax.jit(model.train_step), state, (x, y))
        elif xla:
            import tensorflow as tf

            train_step = tf.function(model.train_step, jit_compile=True)
            info["hlo"] = _tf_cost(train_step, (x, y))
    else:
        model.compile(jit_compile=jit)
        info["jit_compile"] = bool(model.jit_compile)

        def step():
            keras.ops.convert_to_numpy(model.predict_on_batch(x))

        step()
        if backend == "jax":
            import jax

            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            fwd = jax.jit(lambda tv, x: model.stateless_call(tv, ntv, x)[0])
            info["hlo"] = _jax_cost(fwd, tv, x)
        elif xla:
            import tensorflow as tf

            fwd = tf.function(lambda x: model(x, training=False), jit_compile=True)
            info["hlo"] = _tf_cost(fwd, x)
    return step, info


def _big_vision_runner(item, big_vision_dir):
    if not big_vision_dir or not os.path.isdir(
        os.path.join(big_vision_dir, "big_vision")
    ):
        raise Skip(
            "big_vision checkout not given: pass --big-vision-dir or set BIG_VISION_DIR "
            "(a clone of github.com/google-research/big_vision)"
        )
    sys.path.insert(0, big_vision_dir)
    try:
        import big_vision.models.vit as bv_vit
        import big_vision.optax as bv_optax
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError as e:
        raise Skip(
            f"big_vision's dependencies missing ({e}); pip install flax optax"
        ) from e

    dtype_mm = "bfloat16" if item["dtype"] == "bfloat16" else "float32"
    model = bv_vit.Model(
        num_classes=1000,
        variant=item["variant"],
        pool_type=item["pool"],
        dtype_mm=dtype_mm,
    )
    x, y, _ = _data(item)
    x, y = jnp.asarray(x), jnp.asarray(y)
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
    info = {}
    if item["kind"] == "infer":
        fwd = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])

        def step():
            fwd(params, x).block_until_ready()

        step()
        info["hlo"] = _jax_cost(fwd, params, x)
        return step, info

    if item["opt"] == "adamw":
        tx = optax.adamw(LR, weight_decay=WD)
    else:
        tx = optax.chain(
            optax.clip_by_global_norm(CLIP),
            bv_optax.scale_by_adafactor(),
            optax.add_decayed_weights(WD),
            optax.scale(-LR),
        )

    def loss_fn(p, x, y):
        logits, _ = model.apply({"params": p}, x, train=True)
        return jnp.mean(-jnp.sum(jax.nn.log_softmax(logits) * y, axis=-1))

    def update(p, s, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    update_jit = jax.jit(update, donate_argnums=(0, 1))
    state = {"params": params, "opt": tx.init(params)}
    info["hlo"] = _jax_cost(jax.jit(update), state["params"], state["opt"], x, y)

    def step():
        state["params"], state["opt"], loss = update_jit(
            state["params"], state["opt"], x, y
        )
        loss.block_until_ready()

    step()
    return step, info


def _timm_runner(item, exact_gelu=False):
    try:
        import timm
        import torch
        from timm.layers import GELUTanh
        from timm.models.vision_transformer import VisionTransformer
    except Exception as e:  # timm imports torchvision, which can fail to load
        raise Skip(f"timm not importable ({type(e).__name__}: {e})") from e

    width, depth, heads, mlp, patch = _dims(item["variant"])
    model = VisionTransformer(
        img_size=item["image"],
        patch_size=patch,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp / width,
        num_classes=1000,
        class_token=False,
        global_pool="avg" if item["pool"] == "gap" else "map",
        fc_norm=False,
        act_layer=torch.nn.GELU if exact_gelu else GELUTanh,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    x, _, labels = _data(item)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(labels).to(device)
    autocast = torch.autocast(
        device, torch.bfloat16, enabled=item["dtype"] == "bfloat16"
    )
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if item["kind"] == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(x)
            sync()

        step()
        return step, {"timm": timm.__version__, "torch": torch.__version__}

    if item["opt"] == "adamw":
        opt = torch.optim.AdamW(model.parameters(), LR, weight_decay=WD)
    else:
        from timm.optim import AdafactorBigVision

        opt = AdafactorBigVision(model.parameters(), lr=LR, weight_decay=WD)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        sync()

    step()
    return step, {"timm": timm.__version__, "torch": torch.__version__}


def _matmul_peak(framework):
    """Measured bf16 matmul FLOP/s of the device (8192² × 8192²), for MFU."""
    import numpy as np

    n, reps = 8192, 10
    a = np.ones((n, n), np.float32)
    step = _matmul_step(framework, a, a, "bfloat16")
    step()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _host_memory():
    """``keras_scalevit/utils/host_memory.py`` alone: peers' workers need no Keras."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "keras_scalevit", "utils", "host_memory.py")
    spec = importlib.util.spec_from_file_location("host_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(framework, items, big_vision_dir, torch_compile):
    """Builds every item, then answers ``run`` requests on stdin with timings."""
    if framework.startswith("ours-") or framework == "keras-hub":
        backend = framework.split("-")[1] if framework.startswith("ours-") else "jax"
        os.environ["KERAS_BACKEND"] = backend
        # TensorFlow reads this once, when Keras imports it: unset is TensorFlow's
        # own choice (what a user gets), "0" its plain Eigen kernels, "1" oneDNN.
        onednn = {"ours-tensorflow-eigen": "0", "ours-tensorflow-onednn": "1"}
        if framework in onednn:
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = onednn[framework]
        else:
            os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)

    if os.environ.get("SCALEVIT_KEEP_HOST_MEMORY") == "1":
        # Before any framework allocates: threads keep the malloc arena they start on.
        if not _host_memory().keep_host_memory():
            raise SystemExit("--keep-host-memory needs glibc's malloc (Linux)")

    def reply(obj):
        sys.__stdout__.write(json.dumps(obj) + "\n")
        sys.__stdout__.flush()

    sys.stdout = sys.stderr  # frameworks' prints must not break the protocol
    steps, infos = {}, {}
    for name, item in items.items():
        start = time.perf_counter()
        try:
            if item["kind"] == "matmul":
                step, info = _matmul_runner(framework, item)
            elif framework == "big_vision":
                step, info = _big_vision_runner(item, big_vision_dir)
            elif framework in ("timm", "timm-erf"):
                step, info = _timm_runner(item, exact_gelu=framework == "timm-erf")
            else:
                step, info = _keras_runner(framework, item, torch_compile)
            steps[name] = step
            info["setup_s"] = round(time.perf_counter() - start, 1)
        except Skip as e:
            info = {"skipped": str(e)}
        infos[name] = info
    if items and "gpu" in os.environ.get("SCALEVIT_BENCH_MODE", ""):
        for info in infos.values():
            info["matmul_peak_flops"] = _matmul_peak(framework)
            break
    reply({"ready": infos})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        reply(timed(steps[cmd["item"]], cmd["steps"]))


def timed(step, steps):
    """Per-step wall seconds of ``step``, with the minor page faults and kernel time.

    A minor page fault is the kernel handing the process a fresh page (a buffer
    malloc took from the system and zeroes on first touch). On a 2-core machine
    they cost: one timm B/16 b8 batch took 1071 ms without faults and 1305 ms with
    66k in the same process, so rounds that differ in faults differ in time.
    """
    import resource  # POSIX only: imported where it is used

    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds / steps,
        "minor_faults": (after.ru_minflt - before.ru_minflt) / steps,
        "sys_s": (after.ru_stime - before.ru_stime) / steps,
    }


# ------------------------------------------------------------------------------ parent


def median_interval(values, level=0.95):
    """The median of ``values`` and a distribution-free interval for the true median.

    The interval is ``[v_(k), v_(n+1-k)]`` in the sorted values, with the largest ``k``
    whose coverage reaches ``level``: the true median lies outside it only when fewer
    than ``k`` values fall on one side of it, so for any continuous distribution of
    independent values its coverage is ``1 - 2 P(B < k)``, ``B ~ Binomial(n, 1/2)``.
    When no ``k`` reaches ``level`` (fewer than 6 values for 95%), ``k = 1`` (the
    range) and its own coverage (93.75% for 5 values) are returned.

    Returns ``(median, low, high, coverage)``.

    Example:

    >>> median_interval(range(1, 11))  # 10 values: the 2nd and 9th, 97.9%
    (5.5, 2, 9, 0.978515625)
    """
    v = sorted(values)
    n = len(v)
    if n == 0:
        raise ValueError("`values` must hold at least one value, got none.")
    if not 0 < level < 1:
        raise ValueError(f"`level` must lie strictly between 0 and 1, got {level}.")

    def coverage(k):
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return statistics.median(v), v[k - 1], v[n - k], coverage(k)


def summarise(items, times, infos, reference, faults=None):
    """Median seconds per item and framework, and each median / the reference's.

    ``times[item][framework]`` is a list of per-step seconds (one per round). The
    reference is ``reference`` when it ran the item, else the fastest framework.
    ``faults``, shaped like ``times``, holds each round's minor page faults per step.
    ``paired_ratio`` pairs each framework's rounds with the reference's (a worker
    that died pairs the rounds it finished): the median of the per-round ratios and
    its ``median_interval``.
    """
    rows = {}
    for name in items:
        runs = {fw: ts for fw, ts in times.get(name, {}).items() if ts}
        if not runs:
            continue
        med = {fw: statistics.median(ts) for fw, ts in runs.items()}
        ref = reference if reference in med else min(med, key=med.get)
        rows[name] = {
            "reference": ref,
            "median_s": med,
            "ratio": {fw: m / med[ref] for fw, m in med.items()},
            "rounds": {fw: len(ts) for fw, ts in runs.items()},
            "paired_ratio": {},
        }
        for fw, ts in runs.items():
            # A worker that died pairs the rounds it finished (not strict).
            ratios = [t / r for t, r in zip(ts, runs[ref], strict=False)]
            if fw != ref and ratios:
                mid, lo, hi, cover = median_interval(ratios)
                rows[name]["paired_ratio"][fw] = {
                    "median": mid, "low": lo, "high": hi, "coverage": cover,
                    "pairs": len(ratios),
                }  # fmt: skip
        counts = (faults or {}).get(name, {})
        if any(counts.get(fw) for fw in med):
            rows[name]["minor_faults_per_step"] = {
                fw: statistics.median(counts[fw]) for fw in med if counts.get(fw)
            }
        if items[name]["kind"] == "infer":
            rows[name]["images_per_s"] = {
                fw: items[name]["batch"] / m for fw, m in med.items()
            }
        if items[name]["kind"] == "matmul":
            flops = 2 * math.prod(items[name]["shape"])
            rows[name]["gflops_per_s"] = {fw: flops / m / 1e9 for fw, m in med.items()}
        peaks = {
            fw: infos.get(fw, {}).get(name, {}).get("matmul_peak_flops") for fw in med
        }
        if any(peaks.values()):
            flops = 3 * forward_flops(items[name])
            rows[name]["mfu"] = {
                fw: flops / med[fw] / peaks[fw] for fw in med if peaks.get(fw)
            }
    return rows


def markdown(items, rows, infos, frameworks):
    """The timing table (ms or img/s, × reference) and the compiled-cost table."""
    cols = [fw for fw in frameworks if any(fw in r["median_s"] for r in rows.values())]
    out = ["| item | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for fw in cols:
            if fw not in row["median_s"]:
                cells.append("—")
            elif items[name]["kind"] == "infer":
                ips = row["images_per_s"][fw]
                cells.append(f"{ips:.2f} img/s ({row['ratio'][fw]:.2f}×)")
            elif items[name]["kind"] == "matmul":
                rate = row["gflops_per_s"][fw]
                cells.append(f"{rate:.0f} GFLOP/s ({row['ratio'][fw]:.2f}×)")
            else:
                ms = 1e3 * row["median_s"][fw]
                cells.append(f"{ms:.0f} ms ({row['ratio'][fw]:.2f}×)")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Ratios: time relative to the row's reference (`" + "`, `".join(
        sorted({r["reference"] for r in rows.values()})) + "`); lower is faster.")  # fmt: skip
    paired = {n: r["paired_ratio"] for n, r in rows.items() if r.get("paired_ratio")}
    if paired:
        covers = sorted({p["coverage"] for ps in paired.values() for p in ps.values()})
        out += [
            "",
            "Per-round ratios to the reference, paired within each round: median "
            "[interval for the true median, " + " / ".join(f"{c:.1%}" for c in covers)
            + " coverage by the number of rounds].",
            "",
            "| item | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]  # fmt: skip
        for name, ps in paired.items():
            cells = [
                f"{ps[fw]['median']:.3f} [{ps[fw]['low']:.3f}, {ps[fw]['high']:.3f}]"
                if fw in ps
                else "ref"
                if fw == rows[name]["reference"]
                else "—"
                for fw in cols
            ]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    faulted = {
        name: row["minor_faults_per_step"]
        for name, row in rows.items()
        if "minor_faults_per_step" in row
    }
    if faulted:
        out += [
            "",
            "Minor page faults per step (median of the rounds; each costs time):",
            "",
            "| item | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for name, counts in faulted.items():
            cells = [f"{counts[fw]:.0f}" if fw in counts else "—" for fw in cols]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    hlo = [
        (name, fw, info["hlo"])
        for fw in frameworks
        for name, info in infos.get(fw, {}).items()
        if "hlo" in info
    ]
    if hlo:
        out += [
            "",
            "| item | framework | GFLOP | GB accessed | bytes/FLOP | fusions | largest fusion |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, fw, h in sorted(hlo):
            out.append(
                f"| {name} | {fw} | {h['flops'] / 1e9:.1f} | "
                f"{h['bytes_accessed'] / 1e9:.3f} | "
                f"{h['bytes_accessed'] / max(h['flops'], 1):.4f} | "
                f"{h['fusions']} | {h['largest_fusion']} |"
            )
    mfu = [(n, r["mfu"]) for n, r in rows.items() if r.get("mfu")]
    for name, vals in mfu:
        out.append("")
        out.append(
            f"MFU {name}: " + ", ".join(f"{fw} {v:.1%}" for fw, v in vals.items())
        )
    return "\n".join(out) + "\n"


def bar_chart(rows, frameworks, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [fw for fw in frameworks if any(fw in r["ratio"] for r in rows.values())]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 4))
    width = 0.8 / max(len(cols), 1)
    for i, fw in enumerate(cols):
        xs = [j + i * width for j, r in enumerate(rows.values()) if fw in r["ratio"]]
        ys = [r["ratio"][fw] for r in rows.values() if fw in r["ratio"]]
        ax.bar(xs, ys, width, label=fw)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels(list(rows), rotation=15, fontsize=8)
    ax.set_ylabel("time / reference (lower is faster)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pythons(specs):
    """``["timm=/venv/bin/python", ...]`` -> ``{"timm": "/venv/bin/python"}``."""
    out = {}
    for spec in specs or ():
        name, sep, path = spec.partition("=")
        if not sep or name not in FRAMEWORKS or not path:
            raise ValueError(
                f"`--python` must be FRAMEWORK=PATH with FRAMEWORK among "
                f"{FRAMEWORKS}, got {spec!r}."
            )
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ValueError(f"`--python` {spec!r}: {path} is not an executable.")
        out[name] = path
    return out


def _python_for(framework, pythons):
    """The worker's Python: its own ``--python``, timm's for timm-erf, else ours."""
    framework = _framework(framework)
    base = "timm" if framework == "timm-erf" else framework
    return pythons.get(framework, pythons.get(base, sys.executable))


def _framework(name):
    """The framework a ``--frameworks`` entry runs: ``NAME`` or ``NAME@K``.

    ``NAME@K`` (K = 2, 3, ...) is one more worker of ``NAME``, a control: the same
    program in another process, timed in the same rounds, so its paired ratio to
    ``NAME`` shows how far apart the host puts two runs of one program.
    """
    base, sep, copy = name.partition("@")
    if base not in FRAMEWORKS or (sep and not (copy.isdigit() and int(copy) >= 2)):
        raise ValueError(
            f"`--frameworks` must name frameworks among {FRAMEWORKS}, each "
            f"optionally with @2, @3, ... for another worker of it, got {name!r}."
        )
    return base


def _with_tunables(tunables, added):
    """``GLIBC_TUNABLES`` ``tunables`` with ``added`` ("name=value" each) set."""
    names = {t.split("=", 1)[0] for t in added}
    kept = [t for t in tunables.split(":") if t and t.split("=", 1)[0] not in names]
    return ":".join(kept + list(added))


def _tunables(args):
    """The glibc tunables every worker starts with, from ``--hugepages`` and
    ``--glibc-tunables``."""
    added = [t for t in (args.glibc_tunables or "").split(":") if t]
    bad = [t for t in added if not re.fullmatch(r"glibc\.[\w.]+=\w+", t)]
    if bad:
        raise ValueError(
            "`--glibc-tunables` must be colon-separated name=value pairs such as "
            f"glibc.malloc.trim_threshold=17179869184, got {bad}."
        )
    # One value per name: a later one (the user's) replaces an earlier one.
    merged = {"glibc.malloc.hugetlb": "1"} if args.hugepages else {}
    merged.update(t.split("=", 1) for t in added)
    return [f"{name}={value}" for name, value in merged.items()]


def _command(framework, items, args):
    """The worker's command line: a control ``NAME@K`` runs ``NAME``'s worker."""
    python = _python_for(framework, _pythons(args.python))
    cmd = [python, os.path.abspath(__file__), "--worker", _framework(framework)]
    cmd += ["--items", json.dumps(items)]
    if args.big_vision_dir:
        cmd += ["--big-vision-dir", args.big_vision_dir]
    if args.torch_compile:
        cmd += ["--torch-compile"]
    return cmd


def _start(framework, items, args):
    cmd = _command(framework, items, args)
    env = dict(os.environ)
    if args.gpu:
        env["SCALEVIT_BENCH_MODE"] = "gpu"
    env["SCALEVIT_KEEP_HOST_MEMORY"] = "1" if args.keep_host_memory else "0"
    tunables = _tunables(args)
    if tunables:
        env["GLIBC_TUNABLES"] = _with_tunables(env.get("GLIBC_TUNABLES", ""), tunables)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def _ask(proc, obj):
    proc.stdin.write(json.dumps(obj) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("worker exited")
    return json.loads(line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tiny item per framework")
    p.add_argument("--gpu", action="store_true", help="bf16 ViT-L/16 step and MFU")
    p.add_argument(
        "--hugepages",
        action="store_true",
        help="every worker with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc >= 2.35): "
        "transparent huge pages behind malloc",
    )
    p.add_argument(
        "--glibc-tunables",
        metavar="NAME=VALUE[:...]",
        help="glibc tunables for every worker, e.g. glibc.malloc.mmap_threshold="
        "33554432:glibc.malloc.trim_threshold=17179869184 (malloc keeps its freed "
        "memory: no fresh pages for torch's large buffers)",
    )
    p.add_argument(
        "--keep-host-memory",
        action="store_true",
        help="every worker calls keras_scalevit.utils.keep_host_memory() first: "
        "glibc's malloc keeps freed memory (no fresh pages per step)",
    )
    p.add_argument("--items", help="comma-separated item names (default: all)")
    p.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help="comma-separated; NAME@2 adds a second worker of NAME, a control whose "
        "paired ratio to NAME is the host's spread between two runs of one program",
    )
    p.add_argument("--reference", default="big_vision")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per round")
    p.add_argument("--big-vision-dir", default=os.environ.get("BIG_VISION_DIR"))
    p.add_argument(
        "--torch-compile",
        action="store_true",
        help="ours-torch with jit_compile=True (torch.compile)",
    )
    p.add_argument(
        "--python",
        action="append",
        metavar="FRAMEWORK=PATH",
        help="the Python that runs a framework's worker (repeatable), e.g. "
        "timm=/venv/bin/python for a venv whose torch matches its torchvision",
    )
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        # --items carries the item definitions as JSON for a worker.
        return worker(
            args.worker, json.loads(args.items), args.big_vision_dir, args.torch_compile
        )

    items = GPU_ITEMS if args.gpu else QUICK_ITEMS if args.quick else ITEMS
    if args.items:
        pool = {**ITEMS, **QUICK_ITEMS, **GPU_ITEMS}
        unknown = [n for n in args.items.split(",") if n not in pool]
        if unknown:
            raise ValueError(
                f"`--items` must name items of {sorted(pool)}, got {unknown}."
            )
        items = {n: pool[n] for n in args.items.split(",")}
    frameworks = [f for f in args.frameworks.split(",") if f]
    for f in frameworks:
        _framework(f)  # a bad name fails before any worker starts
    if len(set(frameworks)) < len(frameworks):
        raise ValueError(
            f"`--frameworks` must name each worker once, got {args.frameworks!r} "
            "(NAME@2 is a second worker of NAME)."
        )
    _pythons(args.python)  # a bad --python fails before any worker starts
    _tunables(args)  # and so does a bad --glibc-tunables
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (2 if args.quick else 3)

    started = time.time()
    procs, infos = {}, {}
    for fw in frameworks:  # one at a time: set-ups (compiles) do not overlap
        print(f"[{fw}] starting", flush=True)
        proc = _start(fw, items, args)
        line = proc.stdout.readline()
        if not line:
            print(f"[{fw}] SKIPPED: worker failed to start (see stderr above)")
            continue
        infos[fw] = json.loads(line)["ready"]
        for name, info in infos[fw].items():
            if "skipped" in info:
                print(f"[{fw}] {name} SKIPPED: {info['skipped']}", flush=True)
            else:
                print(f"[{fw}] {name} ready in {info['setup_s']} s", flush=True)
        if all("skipped" in i for i in infos[fw].values()):
            _ask_quit(proc)
        else:
            procs[fw] = proc

    times = {name: {fw: [] for fw in procs} for name in items}
    faults = {name: {fw: [] for fw in procs} for name in items}
    sys_s = {name: {fw: [] for fw in procs} for name in items}
    for r in range(rounds):
        order = (
            list(procs)[r % max(len(procs), 1) :]
            + list(procs)[: r % max(len(procs), 1)]
        )
        for name in items:
            for fw in order:
                if fw not in procs or "skipped" in infos[fw][name]:
                    continue
                try:
                    sec = _ask(procs[fw], {"cmd": "run", "item": name, "steps": steps})
                except (BrokenPipeError, RuntimeError):
                    code = procs.pop(fw).wait()
                    print(f"[{fw}] worker died (exit code {code}; -9 is often the "
                          f"out-of-memory killer): left out of the remaining rounds")  # fmt: skip
                    continue
                times[name][fw].append(sec["seconds"])
                faults[name][fw].append(sec["minor_faults"])
                sys_s[name][fw].append(sec["sys_s"])
        print(f"round {r + 1}/{rounds} done", flush=True)
    for proc in procs.values():
        _ask_quit(proc)

    rows = summarise(items, times, infos, args.reference, faults)
    table = markdown(items, rows, infos, frameworks)
    os.makedirs(args.out, exist_ok=True)
    result = {
        "items": items,
        "frameworks": frameworks,
        "rounds": rounds,
        "steps_per_round": steps,
        "times_s": times,
        "minor_faults_per_step": faults,
        "sys_s_per_step": sys_s,
        "summary": rows,
        "workers": infos,
        "hugepages": args.hugepages,
        "keep_host_memory": args.keep_host_memory,
        "glibc_tunables": ":".join(_tunables(args)),
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "wall_s": round(time.time() - started, 1),
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    if rows:
        bar_chart(rows, frameworks, os.path.join(args.out, "results.png"))
    print("\n" + table)
    print(f"load average at the end: {os.getloadavg()}; results in {args.out}/")
    return result


def _ask_quit(proc):
    try:
        proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        proc.stdin.flush()
    except BrokenPipeError:
        pass
    proc.wait(timeout=60)


if __name__ == "__main__":
    main()
