"""Helpers shared by the configs: ``path:arg`` parsing and big_vision's few-shot set."""

import ml_collections

# keras_scalevit.data.DIGITS_NAME, spelled out: configs load before the flags are
# parsed and must not import TensorFlow (tests/test_train.py checks they agree).
DIGITS_NAME = "scalevit_digits"


def parse_arg(arg, **defaults):
    """Parses ``"k=v,k2=v2"`` (or a bare value for the first key) into a ConfigDict.

    Values are converted to the type of the default (bool, int, float, str).
    Unknown keys are an error.
    """
    result = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return result
    first = next(iter(defaults))
    for item in arg.split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            key, value = first, item
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"Unknown config argument {key!r} in {arg!r}; allowed: {sorted(defaults)}."
            )
        default = defaults[key]
        if isinstance(default, bool):
            value = value.strip().lower() in ("1", "true", "yes", "y")
        elif isinstance(default, int):
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        result[key] = value
    return result


def fewshot_lsr(log_steps, pp="decode|resize(256)|central_crop(224)|value_range(-1,1)"):
    """big_vision's ``configs/common_fewshot.get_fewshot_lsr`` defaults.

    Shots 1/5/10/25, 3 seeds, l2 1024, the pre-logits; the six public data sets
    (ImageNet is left out, as in big_vision, because it needs a manual download).
    """
    return dict(
        type="fewshot_lsr",
        datasets={
            "caltech": ("caltech101", "train", "test"),
            "cars": ("cars196:2.1.0", "train", "test"),
            "cifar100": ("cifar100", "train", "test"),
            "dtd": ("dtd", "train", "test"),
            "pets": ("oxford_iiit_pet", "train", "test"),
            "uc_merced": ("uc_merced", "train[:1000]", "train[1000:]"),
        },
        pp_train=pp,
        pp_eval=pp,
        shots=(1, 5, 10, 25),
        l2_reg=2.0**10,
        num_seeds=3,
        log_steps=log_steps,
        display_first=[("imagenet", 10)],
    )


def mesh_config():
    """``config.mesh``: where training runs (default: one device, no distribution).

    - ``strategy``: None (one device) or ``"data"``, ``"fsdp"``, ``"tensor"``,
      ``"fsdp+tensor"`` (`keras_scalevit.distribution.make_distribution`; JAX only).
    - ``shape``: None (every device on the data axis) or ``(data, model)``; on the
      command line ``--config.mesh.shape=4,2``.
    - ``multihost``: None (auto: on when ``JAX_COORDINATOR_ADDRESS`` or Keras'
      ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` is set), True (call
      ``keras.distribution.initialize()``, e.g. on every host of a TPU pod) or False.
    """
    from ml_collections import config_dict

    return ml_collections.ConfigDict(
        {
            "strategy": config_dict.placeholder(str),
            "shape": config_dict.placeholder(tuple),
            "multihost": config_dict.placeholder(bool),
        }
    )
