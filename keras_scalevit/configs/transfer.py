r"""Fine-tuning (transfer) at a higher resolution: big_vision's ``configs/transfer.py``.

``python -m keras_scalevit.train --config=keras_scalevit/configs/transfer.py:\
dataset=imagenet2012,init=/path/ckpt.npz,res=384 --workdir=/tmp/ft``

The recipe (big_vision ``configs/transfer.py``; the paper fine-tunes the same way,
at 384 px, or 518 px for ViT-G/14):

- ``model_init``: the pre-trained model (a big_vision ``.npz``, ``file.npz:img`` for
  a subtree, or a ``.keras`` file written by ``keras_scalevit.train``), loaded by
  `keras_scalevit.transfer.build_transfer_model`: every body weight copied, the
  learned position embedding resampled to the new grid (``resample_posemb``), the
  head replaced by a zero-initialised one (``model_load.dont_load``);
- ``big_vision.momentum_hp``: SGD with momentum 0.9 kept in bfloat16, no weight
  decay, global-norm gradient clipping at 1.0;
- learning rate 0.01 (big_vision's documented sweep is 0.03 / 0.01 / 0.003; set
  ``lr=`` in the argument), cosine schedule with linear warmup (500 steps, 100 for
  the small pets / flowers sets);
- batch 512, softmax cross-entropy, no mixup; 20k steps on ImageNet, 10k on CIFAR,
  500 on pets / flowers;
- train ``decode|resize_small(h)|random_crop(res)|flip_lr`` (``crop=`` selects
  big_vision's alternatives ``inception_crop`` or ``resize_crop``), evaluation
  ``decode|resize_small(h)|central_crop(res)`` with ``h = res * 448 / 384``, then
  ``value_range(-1, 1)|onehot(C, key='label', key_result='labels')``.

Argument (``path:key=value,...``): ``dataset`` (``imagenet2012``, ``cifar10``,
``cifar100``, ``oxford_iiit_pet``, ``oxford_flowers102`` or ``digits``), ``init``,
``res``, ``crop``, ``lr``.

``dataset=digits`` runs offline on the embedded ``scalevit_digits`` (scikit-learn's
8x8 digits): fine-tune a model trained by ``configs/digits.py`` (8 px) or at 16 px
at a higher resolution (``res``, default 16), e.g.::

    python -m keras_scalevit.train --config=keras_scalevit/configs/digits.py \
        --workdir=/tmp/digits
    python -m keras_scalevit.train \
        --config=keras_scalevit/configs/transfer.py:dataset=digits,init=/tmp/digits/model.keras,res=16 \
        --workdir=/tmp/digits_ft16

Digits are not flipped or cropped (a flipped digit is another symbol and the 8x8
source leaves no margin); they are resized to ``res``. Batch 128, 300 steps
(warmup 30), evaluated on the 359 test digits.

Polyak averaging (paper-only, absent from big_vision): ``ema_momentum`` (None = off)
gives the optimizer ``use_ema=True, ema_momentum=...`` via
`keras_scalevit.transfer.ema_optimizer_kwargs`.
"""

import ml_collections
from ml_collections import config_dict

from keras_scalevit.configs._common import mesh_config

# name: (num_classes, train split, val split (big_vision's minival), test split,
#        total_steps, warmup_steps). From big_vision configs/transfer.py.
DATASETS = {
    "imagenet2012": (1000, "train[:99%]", "train[99%:]", "validation", 20_000, 500),
    "cifar10": (10, "train[:98%]", "train[98%:]", "test", 10_000, 500),
    "cifar100": (100, "train[:98%]", "train[98%:]", "test", 10_000, 500),
    "oxford_iiit_pet": (37, "train[:90%]", "train[90%:]", "test", 500, 100),
    "oxford_flowers102": (102, "train", "validation", "test", 500, 100),
}
CROPS = ("resmall_crop", "inception_crop", "resize_crop")
DIGITS_STEPS = 300
DIGITS_BATCH = 128


def _parse_arg(arg, **defaults):
    """big_vision's ``bvcc.parse_arg``: ``"k=v,k2=v2"`` typed by the defaults."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise ValueError(
                f"Bad config argument {item!r} in {arg!r}: expected key=value with "
                f"key in {sorted(defaults)}."
            )
        kind = type(defaults[key])
        try:
            out[key] = kind(value.strip()) if kind is not str else value.strip()
        except ValueError:
            raise ValueError(
                f"Config argument {key}={value!r} must be a {kind.__name__}."
            ) from None
    return ml_collections.ConfigDict(out)


def _labels(num_classes):
    return f"onehot({num_classes}, key='label', key_result='labels')"


def get_config(arg=None):
    """Transfer config; ``arg`` = ``dataset=...,init=...,res=...,crop=...,lr=...``.

    Example:
    >>> from keras_scalevit.configs import transfer
    >>> config = transfer.get_config("dataset=digits")
    >>> config.input.data.name, config.num_classes, config.image_size
    ('scalevit_digits', 10, 16)
    """
    arg = _parse_arg(
        arg, dataset="imagenet2012", init="", res=0, crop="resmall_crop", lr=0.01
    )
    digits = arg.dataset in ("digits", "scalevit_digits")
    if not digits and arg.dataset not in DATASETS:
        raise ValueError(
            f"Unknown dataset={arg.dataset!r}; choose from "
            f"{sorted(DATASETS) + ['digits']}."
        )
    if arg.crop not in CROPS:
        raise ValueError(f"Unknown crop={arg.crop!r}; choose from {CROPS}.")
    res = arg.res or (16 if digits else 384)
    if res <= 0:
        raise ValueError(f"res={res} must be a positive image size.")

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.input = ml_collections.ConfigDict()
    config.image_size = res

    if digits:
        from keras_scalevit.configs._common import DIGITS_NAME

        num_classes = 10
        pp = f"decode|resize({res})|value_range(-1, 1)|{_labels(num_classes)}"
        config.input.data = dict(
            name=DIGITS_NAME, split="train", data_dir=config_dict.placeholder(str)
        )
        config.input.pp = pp
        config.input.batch_size = DIGITS_BATCH
        config.input.shuffle_buffer_size = 2_000
        config.input.cache = True
        config.total_steps = DIGITS_STEPS
        warmup = DIGITS_STEPS // 10
        val = dict(name=DIGITS_NAME, split="test")
        config.evals = ml_collections.ConfigDict()
        config.evals.val = dict(
            type="classification", data=val, pp_fn=pp, log_steps=100, batch_size=359
        )
        config.log_training_steps = 25
        config.ckpt_steps = 100
    else:
        num_classes, train, minival, test, steps, warmup = DATASETS[arg.dataset]
        high = round(res * 448 / 384)
        crop = {
            "resmall_crop": f"resize_small({high})|random_crop({res})",
            "inception_crop": f"inception_crop({res})",
            "resize_crop": f"resize({high})|random_crop({res})",
        }[arg.crop]
        tail = f"value_range(-1, 1)|{_labels(num_classes)}"
        pp_eval = f"decode|resize_small({high})|central_crop({res})|{tail}"
        config.input.data = dict(
            name=arg.dataset, split=train, data_dir=config_dict.placeholder(str)
        )
        config.input.pp = f"decode|{crop}|flip_lr|{tail}"
        config.input.batch_size = 512
        config.input.shuffle_buffer_size = 50_000
        config.total_steps = steps
        config.evals = ml_collections.ConfigDict()
        config.evals.val = dict(
            type="classification",
            data=dict(name=arg.dataset, split=minival),
            pp_fn=pp_eval,
            log_steps=1000,
        )
        config.evals.test = dict(
            type="classification",
            data=dict(name=arg.dataset, split=test),
            pp_fn=pp_eval,
            log_steps=1000,
        )
        config.log_training_steps = 50
        config.ckpt_steps = 1000

    config.verbose = 1  # Keras fit progress bar (2: one line per epoch, 0: silent)
    # One device; e.g. --config.mesh.strategy=fsdp --config.mesh.shape=8,1 (JAX).
    config.mesh = mesh_config()

    # Model: taken from `model_init`; `model` documents what the checkpoint must be
    # (checked by build_transfer_model when passed) and sets per-run options.
    config.model_name = "vit"
    config.model = dict(
        variant=config_dict.placeholder(str),
        pool_type=config_dict.placeholder(str),
        posemb=config_dict.placeholder(str),
        head_zeroinit=True,
        dropout=0.0,
        remat=False,
        dtype=config_dict.placeholder(str),
    )
    config.num_classes = num_classes
    config.init_head_bias = 0.0
    config.model_init = arg.init or config_dict.placeholder(str)
    config.model_load = dict(dont_load=["head/kernel", "head/bias"])
    config.loss = "softmax_xent"  # no mixup (big_vision's mixup.p = 0)

    config.optax_name = "big_vision.momentum_hp"
    config.optax = dict()  # momentum 0.9, bfloat16 accumulator (the defaults)
    config.lr = float(arg.lr)
    config.wd = None
    config.schedule = dict(decay_type="cosine", warmup_steps=warmup)
    config.grad_clip_norm = 1.0
    # Polyak averaging of the weights (paper-only); None: off, as big_vision.
    config.ema_momentum = config_dict.placeholder(float)
    return config
