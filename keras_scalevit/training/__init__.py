r"""Training: big_vision's ``train.py`` recipe with Keras ``model.fit``.

The command line is ``python -m keras_scalevit.train`` (see
`keras_scalevit.train`); `main` is the same in Python. One concern a module:

- `keras_scalevit.training.main`: `main`, the run from config to results;
- `keras_scalevit.training.config`: reading and checking a config
  (`validate_config`), building the model and optimizer;
- `keras_scalevit.training.fingerprint`: `run_fingerprint`, what must not change
  between a checkpoint and the run resuming from it;
- `keras_scalevit.training.checkpoint` and
  `keras_scalevit.training.orbax_checkpoint`: one checkpoint interface, two
  writers (`OrbaxCheckpointer` on JAX, the ``.npz`` `Checkpointer` on TensorFlow
  and torch), picked by `make_checkpointer`; `CheckpointError`;
- `keras_scalevit.training.loop`: `TrainLoop`, the callback that counts steps,
  logs, checkpoints and stops;
- `keras_scalevit.training.metrics` and `keras_scalevit.training.plots`:
  ``metrics.jsonl`` and ``training_curves.png``.

Workdir contents:

- ``checkpoint/<step>/`` (JAX) or ``checkpoint.npz`` (TensorFlow, torch): the
  last checkpoint (model and optimizer variables, the optimizer step and the
  run's fingerprint), written every ``config.ckpt_steps`` steps and at the end.
  Both are committed atomically, so a killed run always leaves a complete
  checkpoint: Orbax writes ``checkpoint/<step>.orbax-checkpoint-tmp*/`` and
  renames it, the ``.npz`` writer ``checkpoint.npz.tmp-<pid>`` and
  ``os.replace``. Orbax saves are asynchronous (training continues while the
  files are written; the run waits for the last one before its final record and
  before `main` returns); a kill during one resumes from the step before. Temp
  files and folders of saves that were killed are removed when the next run
  starts (one run per workdir at a time). A JAX workdir that already holds a
  ``checkpoint.npz`` (written before JAX runs used Orbax) resumes from it and
  keeps writing it.
- ``metrics.jsonl``: one JSON object per line: training lines every
  ``config.log_training_steps`` steps (``loss`` and ``prec@1`` are Keras' running
  means over the current progress-bar epoch), epoch lines with ``val_*`` and
  ``fewshot/*`` results, and a last ``"final": true`` line (``train_wall_s`` is
  the training time of the process that finished the run).
- ``training_curves.png``, ``model.keras`` and ``config.json`` (the config of
  the last run accepted in this workdir).

Exact resume: rerunning the same command continues from the checkpoint. The
data pipeline is a deterministic function of the seed and the position, so the
input restarts at batch ``step``; together with the restored variables the
resumed run ends with the same weights as an uninterrupted one (bitwise on JAX in
the tests). Everything that changes the result is in the checkpoint's
fingerprint (every config field but logging, checkpoint and evaluation cadence,
verbosity, the data directory and caching; plus the Keras backend, the resolved
image size, total steps and ``jit_compile``, and the optimizer's full config);
a resume under a different value raises `CheckpointError` naming the file and
only the differing fields (``field: old → new``) before anything is written.
A corrupt checkpoint raises `CheckpointError` naming the file too.

Rerunning a finished run (checkpoint at ``total_steps``, a final record in
``metrics.jsonl`` and ``model.keras`` present) trains nothing, evaluates nothing
and rewrites nothing: it prints that the run is finished and returns the
recorded final metrics. A run killed after its last checkpoint but before its
final record is completed (evaluated, ``model.keras`` written) without training.
"""

from keras_scalevit.training.checkpoint import (
    CHECKPOINT_NAME,
    Checkpointer,
    CheckpointError,
    check_fingerprint,
    fingerprint_diff,
    read_checkpoint,
    read_checkpoint_meta,
    remove_stale_temp_files,
    restore_checkpoint,
    save_checkpoint,
)
from keras_scalevit.training.config import (
    CONFIG_FIELDS,
    INPUT_FIELDS,
    build_model,
    build_optimizer,
    image_size_from_config,
    jit_compile,
    total_steps_from_config,
    validate_config,
)
from keras_scalevit.training.fingerprint import NOT_FINGERPRINTED, run_fingerprint
from keras_scalevit.training.loop import TrainLoop
from keras_scalevit.training.main import CONFIG_NAME, MODEL_NAME, main
from keras_scalevit.training.metrics import METRICS_NAME, JsonLines, finished_record
from keras_scalevit.training.orbax_checkpoint import (
    ORBAX_DIR_NAME,
    OrbaxCheckpointer,
    make_checkpointer,
)
from keras_scalevit.training.plots import PLOT_NAME, plot_metrics
