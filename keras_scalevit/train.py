r"""Training entry point: ``python -m keras_scalevit.train``.

Usage::

    python -m keras_scalevit.train --config=keras_scalevit/configs/digits.py \
        --workdir=/tmp/digits
    python -m keras_scalevit.train --config=keras_scalevit/configs/vit_i1k.py:variant=B/16 \
        --workdir=/tmp/b16 --config.total_steps=1000

``--config`` defaults to the embedded digits config. The config follows
big_vision's current layout (``config.input.*``, ``config.model.*``,
``config.optax_name``/``optax``/``lr``/``wd``/``wd_mults``/``schedule``,
``config.evals.*``; see ``keras_scalevit/configs/digits.py`` for every key).
The flags are parsed before Keras, JAX or TensorFlow load, so ``--help`` and
flag errors answer at once.

The implementation is the `keras_scalevit.training` package (the workdir,
exact resume and what a rerun does are described there); this module is the
command line and keeps its names importable
(``from keras_scalevit.train import main, CheckpointError, ...``).
"""

import os

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "digits.py")


def cli(argv=None):
    """The command line: parses the flags, then imports the training stack.

    ``python -m keras_scalevit.train --config=PATH[:ARG] --workdir=DIR
    [--config.FIELD=VALUE ...]``.
    """
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file(
        "config",
        _DEFAULT_CONFIG,
        "Training config file (path[:arg]).",
        lock_config=True,
    )
    workdir = flags.DEFINE_string("workdir", None, "Output directory.", required=True)

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        from keras_scalevit.training import main  # the heavy imports, after the flags

        main(config.value, workdir.value)

    app.run(run, argv=argv)  # exits


if __name__ == "__main__":
    cli()
else:
    from keras_scalevit.training import (  # noqa: F401
        CHECKPOINT_NAME,
        CONFIG_FIELDS,
        CONFIG_NAME,
        INPUT_FIELDS,
        METRICS_NAME,
        MODEL_NAME,
        NOT_FINGERPRINTED,
        ORBAX_DIR_NAME,
        PLOT_NAME,
        Checkpointer,
        CheckpointError,
        JsonLines,
        OrbaxCheckpointer,
        TrainLoop,
        build_model,
        build_optimizer,
        check_fingerprint,
        fingerprint_diff,
        finished_record,
        image_size_from_config,
        jit_compile,
        main,
        make_checkpointer,
        plot_metrics,
        read_checkpoint,
        read_checkpoint_meta,
        remove_stale_temp_files,
        restore_checkpoint,
        run_fingerprint,
        save_checkpoint,
        total_steps_from_config,
        validate_config,
    )
