r"""The paper's ViT-g/14 and ViT-G/14 pre-training on JFT-3B.

Values from big_vision's ``configs/proj/scaling_laws/train_vit_g.py`` (spec §7),
in the current big_vision layout (``config.input.*``, ``config.evals.*``):

- ``--config=keras_scalevit/configs/train_vit_g.py`` (or ``:g``) -> ViT-g/14;
  ``:G`` -> ViT-G/14 (the only difference, as in big_vision).
- sigmoid cross-entropy on the multi-hot JFT labels (29,593 classes) with the
  head bias initialised to -10, so the initial loss is small;
- MAP head (attention pooling), learned position embeddings, no representation
  layer, zero-initialised head;
- big_vision's Adafactor: factored second moment, beta2 = 1 - t^-0.8 capped at
  0.999, momentum 0.9 stored in bfloat16, update clipping disabled; global-norm
  gradient clipping 1.0;
- lr 8e-4; decoupled weight decay 0.03 * lr on kernels, 100x on the head kernel
  (``wd_mults``: head 2.4e-3, other kernels 2.4e-5, biases/LN/posemb none);
- rsqrt schedule, timescale 10k, linear warmup 10k, linear cooldown over the last
  50k of 1M steps (the rsqrt part does not depend on the length, so runs can be
  branched into cooldowns, as in the paper).

Batch size: big_vision's released config uses 4096 * 4 = 16,384 (32 images per
TPUv3 core for g/14), the default here; ``:G,batch=32768`` sets another (the
paper's text may use a larger batch for its longest runs; check it before
relying on it). 1M steps see ~16.4B examples at 16,384; set ``total_steps`` for
the budget.

JFT-3B is internal: ``jft_3b`` is not a public TFDS data set. To try the recipe,
point ``config.input.data.name`` at a prepared TFDS data set (e.g.
``imagenet21k`` or ``imagenet2012``) and set ``num_classes`` and the pp strings.
"""

import ml_collections
from ml_collections import config_dict

from keras_scalevit.configs._common import fewshot_lsr, mesh_config, parse_arg

VARIANTS = {"g": "g/14", "G": "G/14"}


def get_config(arg=None):
    """``arg``: ``g`` (default) or ``G``, optionally ``,batch=<int>``.

    Example:
    >>> from keras_scalevit.configs import train_vit_g
    >>> config = train_vit_g.get_config("G,batch=4096")
    >>> config.model.variant, config.input.batch_size
    ('G/14', 4096)
    """
    arg = parse_arg(arg, variant="g", batch=16_384)
    if arg.variant not in VARIANTS and arg.variant not in VARIANTS.values():
        raise ValueError(
            f"train_vit_g.py arg must select 'g' or 'G'; received {arg.variant!r}."
        )
    variant = VARIANTS.get(arg.variant, arg.variant)

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_classes = 29_593
    config.init_head_bias = -10.0

    labels = f"onehot({config.num_classes}, key='labels', key_result='labels')"
    common = f"|value_range(-1, 1)|{labels}|keep('image', 'labels')"
    config.input = ml_collections.ConfigDict()
    config.input.data = dict(
        name="jft_3b", split="train", data_dir=config_dict.placeholder(str)
    )
    config.input.batch_size = arg.batch
    config.input.pp = "decode_jpeg_and_inception_crop(224)|flip_lr" + common
    config.input.shuffle_buffer_size = 250_000  # per host
    config.input.cache = False
    config.image_size = 224

    config.total_steps = 1_000_000
    config.log_training_steps = 50
    config.ckpt_steps = 1_000
    config.verbose = 1
    # One device; e.g. --config.mesh.strategy=fsdp --config.mesh.shape=8,1 (JAX).
    config.mesh = mesh_config()

    config.model_name = "vit"
    config.model = dict(
        variant=variant,
        pool_type="map",
        posemb="learn",
        rep_size=False,
        head_zeroinit=True,
        dropout=0.0,
        remat=False,
        dtype=config_dict.placeholder(str),
    )
    config.model_init = config_dict.placeholder(str)
    config.model_load = dict()
    config.loss = "sigmoid_xent"

    config.optax_name = "big_vision.scale_by_adafactor"
    # big_vision's defaults, written out: bf16 momentum 0.9, beta2 cap 0.999.
    config.optax = dict(momentum=0.9, dtype_momentum="bfloat16", beta2_cap=0.999)
    config.grad_clip_norm = 1.0
    config.lr = 8e-4
    config.wd = 0.03 * 8e-4
    config.wd_mults = [(".*head/kernel", 100.0), (".*/kernel", 1.0)]
    config.schedule = dict(
        decay_type="rsqrt",
        timescale=10_000,
        warmup_steps=10_000,
        cooldown_steps=50_000,
    )

    config.evals = ml_collections.ConfigDict()
    config.evals.val = dict(
        type="classification",
        data=dict(name="jft_3b", split="val"),
        pp_fn="decode|resize_small(256)|central_crop(224)" + common,
        log_steps=1_000,
    )
    config.evals.fewshot = fewshot_lsr(log_steps=10_000)
    return config
