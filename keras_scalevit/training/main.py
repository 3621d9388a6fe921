"""`main`: trains (or resumes, or finishes) the run a config describes."""

import json
import math
import os
import time

import keras
import numpy as np

from keras_scalevit.models.preset_utils import save_trained_preset
from keras_scalevit.training.config import (
    _get,
    _to_dict,
    build_model,
    build_optimizer,
    image_size_from_config,
    jit_compile,
    total_steps_from_config,
    validate_config,
)
from keras_scalevit.training.fingerprint import run_fingerprint
from keras_scalevit.training.loop import TrainLoop
from keras_scalevit.training.mesh import (
    data_axis_size,
    make_run_distribution,
    maybe_initialize,
)
from keras_scalevit.training.metrics import METRICS_NAME, JsonLines, finished_record
from keras_scalevit.training.orbax_checkpoint import make_checkpointer
from keras_scalevit.training.plots import PLOT_NAME, plot_metrics

MODEL_NAME = "model.keras"
PRESET_NAME = "preset"
CONFIG_NAME = "config.json"


def _first_group_lr(config, optimizer):
    """Host-side ``lr * schedule(step)`` of the first variable group, for logs."""
    lr = float(config.lr)
    # The first group that trains (a `None` schedule entry freezes its group).
    trained = [s for s in getattr(optimizer, "group_schedules", None) or () if s]
    if not trained:
        return lambda step: lr
    schedule = trained[0]
    return lambda step: lr * float(keras.ops.convert_to_numpy(schedule(step)))


def _val_pp(val_cfg):
    pp = val_cfg.get("pp_fn")
    if not pp:
        raise ValueError(
            "config.evals.val needs `pp_fn`, the evaluation pp string (the training "
            "pp string has random augmentations)."
        )
    return pp


def _write_outputs(model, config, workdir, final, writer, gathered=None):
    """The final model, preset and plot (one process writes them).

    Outside the distribution: saving creates a few variables (Keras builds an
    optimizer to list what not to save), and under a multi-host distribution
    placing one is a collective the other processes would never join.
    ``gathered``: the weights as whole host arrays (`_gather_weights`) when some
    are sharded across hosts.
    """
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        if gathered is not None:
            # Weights sharded across hosts: a copy of the model on this host,
            # outside the distribution, holding the gathered weights (without
            # the optimizer state, which stays in the Orbax checkpoint).
            model = model.__class__.from_config(model.get_config())
            model.set_weights(gathered)
        model.save(os.path.join(workdir, MODEL_NAME))
        # The trained model as a preset (keras-hub layout, with its preprocessor):
        # `ViTClassifier.from_preset(workdir + "/preset")`.
        save_trained_preset(
            model,
            config,
            os.path.join(workdir, PRESET_NAME),
            metadata={k: final[k] for k in ("step", "val_prec@1") if k in final},
        )
        plot_metrics(writer.path, os.path.join(workdir, PLOT_NAME))
    finally:
        keras.distribution.set_distribution(previous)


def _gather_weights(model):
    """Every weight as one whole NumPy array, or None if this host holds them all.

    A collective when weights are sharded across processes (fsdp or tensor
    parallelism over several hosts): every process must call it.
    """
    if _on_this_host(model):
        return None
    from jax.experimental import multihost_utils

    out = []
    for variable in model.weights:
        value = variable.value
        if getattr(value, "is_fully_addressable", True) or getattr(
            value, "is_fully_replicated", False
        ):
            out.append(np.asarray(value))
        else:
            out.append(np.asarray(multihost_utils.process_allgather(value, tiled=True)))
    return out


def _on_this_host(model):
    """Whether every weight can be read whole by this process."""
    for variable in model.weights:
        value = variable.value
        if getattr(value, "is_fully_addressable", True) or getattr(
            value, "is_fully_replicated", False
        ):
            continue
        return False
    return True


def _is_primary():
    """Whether this process writes the run's files (process 0 of a multi-host run)."""
    if keras.backend.backend() != "jax":
        return True
    import jax

    return jax.process_index() == 0


class _ReadOnlyLines(JsonLines):
    """The metrics log as the other processes of a multi-host run see it: read-only."""

    def write(self, record):
        pass

    def truncate_after(self, step):
        pass

    def remove_stale(self):
        return []


def _check_val_batches(config, val_cfg, distribution, data_dir):
    """Under a mesh every validation batch, the last one too, must split evenly."""
    data = data_axis_size(distribution)
    if data == 1:
        return
    import keras_scalevit.data as kdata

    val_data = val_cfg.get("data") or {}
    batch = int(val_cfg.get("batch_size") or config.input.batch_size)
    name = val_data.get("name", config.input.data.name)
    split = val_data.get("split", "test")
    n = kdata.get_num_examples(name, split, data_dir=val_data.get("data_dir", data_dir))
    if batch % data or (n % batch) % data:
        raise ValueError(
            f"Under config.mesh (a data axis of {data} devices) every validation "
            f"batch must divide by {data}: `config.evals.val.batch_size`={batch} on "
            f"{n} examples of {name}:{split} leaves batches of {batch} and "
            f"{n % batch or batch}. Use a batch size and a split (e.g. "
            f"'{split}[:{n - n % data}]') that divide by {data}, or "
            "config.evals.val=None."
        )


def main(config, workdir):
    """Trains (or resumes) the run ``config`` describes in ``workdir``.

    Args:
        config: ``ml_collections.ConfigDict`` (see ``configs/digits.py``).
        workdir: directory for checkpoints, metrics, plot and final model.

    Returns:
        dict of final metrics (``val_prec@1``, ``val_loss``, few-shot numbers,
        ``step``).

    Example:

    The digits config for two steps (builds the digits set offline into
    ``data_dir``; skipped in the doctests, it takes 10-20 s).
    >>> import os, tempfile
    >>> from keras_scalevit import training
    >>> from keras_scalevit.configs import digits
    >>> config = digits.get_config()
    >>> config.total_steps, config.ckpt_steps, config.verbose = 2, 0, 0
    >>> config.evals = None
    >>> workdir = tempfile.mkdtemp()
    >>> config.input.data.data_dir = os.path.join(workdir, "tfds")
    >>> final = training.main(config, workdir)  # doctest: +SKIP
    >>> final["step"]  # doctest: +SKIP
    2
    """
    validate_config(config)
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
        raise TypeError(f"`workdir` must be a directory path, got {workdir!r}.")
    # Multi-host (a TPU pod, or JAX_COORDINATOR_ADDRESS set): join the other
    # processes before anything asks for the devices.
    maybe_initialize(config)
    image_size = image_size_from_config(config)
    # config.mesh: Keras' distribution, checked against the model (built without
    # weights) before anything is written; model and optimizer are then created
    # under it, sharded, and `fit` splits the input over its data axis.
    distribution = make_run_distribution(
        config, lambda: build_model(config, image_size)
    )
    if distribution is None:
        return _main(config, workdir, None)
    with distribution.scope():
        return _main(config, workdir, distribution)


def _main(config, workdir, distribution):
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    # Orbax on JAX (asynchronous; sharded under a mesh, every process its
    # shards), checkpoint.npz on TensorFlow and torch (and for a JAX workdir that
    # already holds one); the same interface either way.
    checkpointer = make_checkpointer(workdir)
    try:
        return _run(config, workdir, distribution, checkpointer)
    finally:
        # Whatever happened, no save is left half-written by this process: the
        # last one started is committed (or failed) before `main` returns.
        checkpointer.close()


def _run(config, workdir, distribution, checkpointer):
    import keras_scalevit.data as kdata
    from keras_scalevit import losses

    ckpt_path = checkpointer.path
    # Several processes (a pod): all train and save their checkpoint shards, the
    # first writes the files (metrics, config, model, preset, plot).
    primary = _is_primary()
    writer = (JsonLines if primary else _ReadOnlyLines)(
        os.path.join(workdir, METRICS_NAME)
    )
    stale = checkpointer.remove_stale() + writer.remove_stale() if primary else []
    for tmp in stale:
        print(f"Removed {tmp}, left by a write that was interrupted.")
    seed = int(_get(config, "seed", 0))
    data = config.input.data
    data_dir = _get(data, "data_dir")
    batch_size = int(config.input.batch_size)
    num_train = kdata.get_num_examples(data.name, data.split, data_dir=data_dir)
    total_steps = total_steps_from_config(config, num_train)
    image_size = image_size_from_config(config)
    loss = losses.get(config.loss)

    # The optimizer (no variables yet) is all the fingerprint needs: a checkpoint
    # from another configuration is refused before anything is built or written.
    optimizer = build_optimizer(config, total_steps, data_size=num_train)
    fingerprint = run_fingerprint(
        config, optimizer, image_size=image_size, total_steps=total_steps
    )
    meta = None
    if checkpointer.exists():
        meta = checkpointer.metadata()
        checkpointer.check(fingerprint)
        recorded = finished_record(writer.path, total_steps)
        if (
            int(meta.get("step", -1)) >= total_steps
            and recorded is not None
            and os.path.exists(os.path.join(workdir, MODEL_NAME))
        ):
            print(
                f"The run in {workdir} is finished (step {total_steps}); nothing "
                "to do. Its results are in metrics.jsonl and model.keras; use a new "
                "--workdir to train again."
            )
            return recorded

    log_steps = int(_get(config, "log_training_steps", 50))
    ckpt_steps = int(_get(config, "ckpt_steps", 0)) or None
    evals = _to_dict(_get(config, "evals"))
    val_cfg = evals.get("val") or {}
    val_steps = int(val_cfg.get("log_steps") or 0) or None
    # One progress-bar epoch divides both the validation and the checkpoint
    # cadence: checkpoints then sit on epoch boundaries, and a resumed run walks
    # through the same epochs (running means, validations) as an uninterrupted one.
    steps_per_epoch = math.gcd(val_steps or 0, ckpt_steps or 0) or min(
        total_steps, 1000
    )
    saved_step = 0 if meta is None else int(meta.get("step", 0))
    if 0 < saved_step < total_steps:
        # A resume under a changed cadence: the checkpoint's step must be an
        # epoch boundary too. (Only the logged running means see the shorter
        # epochs; the weights do not depend on them.)
        steps_per_epoch = math.gcd(steps_per_epoch, saved_step)
    steps_per_epoch = max(1, min(steps_per_epoch, total_steps))
    epochs = math.ceil(total_steps / steps_per_epoch)

    keras.utils.set_random_seed(seed)
    model = build_model(config, image_size)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[keras.metrics.CategoricalAccuracy(name="prec@1")],
        jit_compile=jit_compile(config),
    )
    optimizer.build(model.trainable_variables)

    start_step = 0
    if meta is not None:
        start_step = checkpointer.restore(model, fingerprint)
        print(f"Resumed from {ckpt_path} at step {start_step}/{total_steps}.")
        writer.truncate_after(start_step)
    elif primary and os.path.exists(writer.path):
        os.remove(writer.path)  # a run killed before its first checkpoint
    # Only now, with the checkpoint (if any) accepted: the config of this run.
    if primary:
        with open(os.path.join(workdir, CONFIG_NAME), "w") as f:
            json.dump(_to_dict(config), f, indent=2, sort_keys=True, default=str)

    val_ds = None
    if val_cfg:
        val_data = val_cfg.get("data") or {}
        _check_val_batches(config, val_cfg, distribution, data_dir)
        val_ds = kdata.make_eval_dataset(
            val_data.get("name", data.name),
            val_data.get("split", "test"),
            _val_pp(val_cfg),
            int(val_cfg.get("batch_size") or batch_size),
            data_dir=val_data.get("data_dir", data_dir),
            cache=bool(val_cfg.get("cache", False)),
        )
        # The pipeline's cardinality is unknown to tf.data; state it so Keras does
        # not warn that the validation "input ran out of data".
        val_batches = math.ceil(
            kdata.get_num_examples(
                val_data.get("name", data.name),
                val_data.get("split", "test"),
                data_dir=val_data.get("data_dir", data_dir),
            )
            / int(val_cfg.get("batch_size") or batch_size)
        )
        import tensorflow as tf

        val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(val_batches))

    callbacks = [
        TrainLoop(
            start_step=start_step,
            total_steps=total_steps,
            log_steps=log_steps,
            ckpt_steps=ckpt_steps,
            ckpt_path=ckpt_path,
            checkpointer=checkpointer,
            fingerprint=fingerprint,
            writer=writer,
            lr_fn=_first_group_lr(config, optimizer),
            examples_per_step=batch_size,
        )
    ]
    fewshot_cfg = evals.get("fewshot")
    fewshot_cb = None
    if fewshot_cfg:
        from keras_scalevit.evaluation import FewShotEvaluator

        fewshot_cfg = dict(fewshot_cfg)
        fewshot_cfg.setdefault("data_dir", data_dir)
        for tfds_name, *_ in fewshot_cfg.get("datasets", {}).values():
            kdata.get_builder(tfds_name, fewshot_cfg["data_dir"])  # prepare digits
        fewshot_cb = FewShotEvaluator.from_config(
            fewshot_cfg, pp_builder=kdata.get_preprocess_fn
        )
        callbacks.insert(0, fewshot_cb)

    t0 = time.time()
    trained = start_step < total_steps
    if trained:
        train_ds = kdata.make_dataset(
            data.name,
            data.split,
            config.input.pp,
            batch_size,
            data_dir=data_dir,
            seed=seed,
            shuffle_buffer=int(_get(config.input, "shuffle_buffer_size", 50_000)),
            cache=_get(config.input, "cache", False),
            start_batch=start_step,
            mixup_p=_get(_get(config, "mixup"), "p") or None,
        )
        val_freq = (val_steps or steps_per_epoch) // steps_per_epoch
        model.fit(
            train_ds,
            epochs=epochs,
            initial_epoch=start_step // steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            validation_data=val_ds,
            validation_freq=val_freq,
            verbose=_get(config, "verbose", 1),
            shuffle=False,  # make_dataset shuffles (seeded, resumable)
        )
    else:  # killed after its last checkpoint: evaluate and write the results
        if getattr(optimizer, "use_ema", False):
            # `fit` writes the Polyak averages into the model at its end; the
            # checkpoint holds the raw weights and the averages.
            optimizer.finalize_variable_values(model.trainable_variables)
        if fewshot_cb is not None:
            fewshot_cb.set_model(model)
            fewshot_cb.on_train_begin()
            fewshot_cb.on_train_end()
    # The last checkpoint (asynchronous on Orbax) is committed before anything
    # reports the run as finished: the final record, the model, the preset.
    checkpointer.wait()
    if getattr(optimizer, "use_ema", False):
        # finalize_variable_values makes each weight share its buffer with the
        # average; on JAX a later compiled call donates the weight's buffer and
        # leaves the optimizer's average deleted. Give the weights their own copy.
        for v in model.trainable_variables:
            v.assign(keras.ops.copy(v.value))
    train_wall = time.time() - t0

    final = {"step": start_step if start_step >= total_steps else total_steps}
    if val_ds is not None:
        results = model.evaluate(val_ds, return_dict=True, verbose=0)
        final.update({f"val_{k}": float(v) for k, v in results.items()})
    if fewshot_cb is not None and fewshot_cb.history:
        results = fewshot_cb._loggable(fewshot_cb.history[-1]["results"])
        final.update({k: float(v) for k, v in results.items() if np.isscalar(v)})
    final["final"] = True
    if trained:  # this process's training time (from the restart, if resumed)
        final["train_wall_s"] = round(train_wall, 2)
    writer.write(final)
    gathered = _gather_weights(model)  # every process joins the gather
    if primary:
        _write_outputs(model, config, workdir, final, writer, gathered)
    msg = ", ".join(f"{k}={v:.4f}" for k, v in final.items() if isinstance(v, float))
    print(f"Final (step {final['step']}): {msg}")
    if "val_prec@1" in final:
        print(f"Final test accuracy: {final['val_prec@1']:.4f}")
    return final
