r"""ViT-S/16 and ViT-B/16 trained from scratch on ImageNet-1k.

``--config=keras_scalevit/configs/vit_i1k.py:variant=B/16`` (default ``S/16``).
Follows big_vision's ``configs/vit_i1k.py`` (How to train your ViT, augreg):
300 epochs at batch 4096, ``train[:99%]`` (the last 1% is minival), class-token
pooling with a representation layer, softmax loss, inception crop + flip +
RandAugment + mixup ("medium2": randaug(2,15), mixup p=0.5), lr 1e-3 with 10k
warmup steps and cosine decay, weight decay 1e-4, gradient clipping 1.0.

One deliberate change: big_vision's file uses Adam (``scale_by_adam`` with bf16
first moment) and notes that the paper's Adafactor "almost always behaves exactly
like adam, but at a fraction of the memory"; ``from_big_vision_config`` implements
big_vision's Adafactor and momentum_hp only, so this config uses
``big_vision.scale_by_adafactor`` (the paper's optimizer). Weight decay is
big_vision's decoupled ``wd`` (not multiplied by the learning rate).

RandAugment uses keras-cv when installed (``pip install keras-scalevit[cv]``);
``aug=light1`` or ``aug=none`` select weaker augmentation.
"""

import ml_collections
from ml_collections import config_dict

from keras_scalevit.configs._common import fewshot_lsr, mesh_config, parse_arg

MIXUP_P = {"none": None, "light1": None, "light2": 0.2, "medium1": 0.2,
           "medium2": 0.5, "strong1": 0.5, "strong2": 0.8}  # fmt: skip
RANDAUG = {"none": "", "light1": "randaug(2,0)", "light2": "randaug(2,10)",
           "medium1": "randaug(2,15)", "medium2": "randaug(2,15)",
           "strong1": "randaug(2,20)", "strong2": "randaug(2,20)"}  # fmt: skip
DEFAULT_AUG = {"Ti/16": "light1", "S/32": "light2", "S/16": "medium2",
               "B/32": "medium2", "B/16": "medium2", "L/16": "medium2"}  # fmt: skip

LABELS = "onehot(1000, key='label', key_result='labels')|keep('image', 'labels')"
PP_EVAL = f"decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|{LABELS}"


def get_config(arg=None):
    """``arg``: ``variant=S/16|B/16`` (or any variant), ``aug=<setting>``.

    Example:
    >>> from keras_scalevit.configs import vit_i1k
    >>> config = vit_i1k.get_config("variant=B/16")
    >>> config.model.variant
    'B/16'
    """
    arg = parse_arg(arg, variant="S/16", aug="")
    aug = arg.aug or DEFAULT_AUG.get(arg.variant, "medium2")
    if aug not in RANDAUG:
        raise ValueError(f"Unknown aug={aug!r}; allowed: {sorted(RANDAUG)}.")

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_classes = 1000
    config.init_head_bias = 0.0

    config.input = ml_collections.ConfigDict()
    config.input.data = dict(
        name="imagenet2012", split="train[:99%]", data_dir=config_dict.placeholder(str)
    )
    config.input.batch_size = 4096
    randaug = f"|{RANDAUG[aug]}" if RANDAUG[aug] else ""
    config.input.pp = (
        f"decode_jpeg_and_inception_crop(224)|flip_lr{randaug}"
        f"|value_range(-1, 1)|{LABELS}"
    )
    config.input.shuffle_buffer_size = 250_000
    config.input.cache = False  # big_vision caches raw (needs ~120 GB of RAM)
    config.image_size = 224
    config.mixup = dict(p=MIXUP_P[aug])

    config.total_epochs = 300
    config.log_training_steps = 50
    config.ckpt_steps = 1_000
    config.verbose = 1
    # One device; e.g. --config.mesh.strategy=fsdp --config.mesh.shape=8,1 (JAX).
    config.mesh = mesh_config()

    config.model_name = "vit"
    config.model = dict(
        variant=arg.variant,
        pool_type="tok",
        rep_size=True,
        posemb="learn",
        head_zeroinit=True,
        dropout=0.0,
        remat=False,
        dtype=config_dict.placeholder(str),
    )
    config.model_init = config_dict.placeholder(str)
    config.model_load = dict()
    config.loss = "softmax_xent"

    config.optax_name = "big_vision.scale_by_adafactor"
    config.optax = dict(momentum=0.9, dtype_momentum="bfloat16", beta2_cap=0.999)
    config.grad_clip_norm = 1.0
    config.lr = 1e-3
    config.wd = 1e-4
    config.wd_mults = [(".*/kernel", 1.0)]
    config.schedule = dict(warmup_steps=10_000, decay_type="cosine")

    config.evals = ml_collections.ConfigDict()
    config.evals.val = dict(
        type="classification",
        data=dict(name="imagenet2012", split="validation"),
        pp_fn=PP_EVAL,
        log_steps=2_500,
    )
    config.evals.fewshot = fewshot_lsr(log_steps=10_000)
    return config
