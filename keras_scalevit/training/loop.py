"""`TrainLoop`: the Keras callback that counts steps, logs, checkpoints and stops."""

import time

import keras

from keras_scalevit.training.checkpoint import Checkpointer
from keras_scalevit.training.metrics import floats


class TrainLoop(keras.callbacks.Callback):
    """Counts optimizer steps, logs, checkpoints and stops at ``total_steps``.

    Training lines are written every ``log_steps`` steps from Keras' logs and a
    host-side schedule. Checkpoints are written at the end of a progress-bar epoch
    (``main`` makes every ``ckpt_steps`` multiple an epoch boundary), after that
    epoch's validation and few-shot record, so a resumed run repeats exactly the
    epochs, evaluations and running means of an uninterrupted one.

    Example:
    >>> import os, tempfile
    >>> import numpy as np, keras
    >>> from keras_scalevit.training import TrainLoop
    >>> class Records(list):
    ...     write = list.append
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> records = Records()
    >>> loop = TrainLoop(
    ...     start_step=0, total_steps=3, log_steps=1, ckpt_steps=None,
    ...     ckpt_path=os.path.join(tempfile.mkdtemp(), "checkpoint.npz"),
    ...     fingerprint={}, writer=records)
    >>> x, y = np.ones((8, 4), "float32"), np.zeros((8, 2), "float32")
    >>> _ = model.fit(x, y, batch_size=2, epochs=5, callbacks=[loop], verbose=0)
    >>> loop.step, [r["step"] for r in records]
    (3, [1, 2, 3])
    >>> os.path.exists(loop.ckpt_path)
    True
    """

    def __init__(
        self,
        *,
        start_step,
        total_steps,
        log_steps,
        ckpt_steps,
        ckpt_path=None,
        fingerprint,
        writer,
        checkpointer=None,
        lr_fn=None,
        examples_per_step=None,
    ):
        super().__init__()
        self.step = int(start_step)
        self.total_steps = int(total_steps)
        self.log_steps = log_steps
        self.ckpt_steps = ckpt_steps
        if checkpointer is None:
            if ckpt_path is None:
                raise TypeError("TrainLoop needs `ckpt_path` or `checkpointer`.")
            checkpointer = Checkpointer(ckpt_path)
        self.checkpointer = checkpointer
        self.ckpt_path = checkpointer.path
        self.fingerprint = fingerprint
        self.writer = writer
        self.lr_fn = lr_fn
        self.examples_per_step = examples_per_step
        self._t0 = None

    def on_train_begin(self, logs=None):
        self._t0 = time.time()

    def save(self):
        """Writes the checkpoint now (`save_checkpoint` at the current ``step``).

        Example:
        >>> import os, tempfile
        >>> import keras
        >>> from keras_scalevit.training import TrainLoop, restore_checkpoint
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> model.optimizer.build(model.trainable_variables)
        >>> loop = TrainLoop(
        ...     start_step=5, total_steps=10, log_steps=None, ckpt_steps=None,
        ...     ckpt_path=os.path.join(tempfile.mkdtemp(), "checkpoint.npz"),
        ...     fingerprint={}, writer=None)
        >>> loop.set_model(model)
        >>> loop.save()
        >>> restore_checkpoint(loop.ckpt_path, model, fingerprint={})
        5
        """
        self.checkpointer.save(self.model, self.step, self.fingerprint)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        done = self.step >= self.total_steps
        if done or (self.log_steps and self.step % self.log_steps == 0):
            record = {"step": self.step, **floats(logs)}
            if self.lr_fn is not None:
                record["lr"] = self.lr_fn(self.step - 1)  # the rate of this update
            if self.examples_per_step:
                record["examples_seen"] = self.step * self.examples_per_step
            record["wall_s"] = round(time.time() - self._t0, 3)
            self.writer.write(record)
        if done:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        record = {"step": self.step, "epoch": epoch + 1}
        record.update(
            {k: v for k, v in floats(logs).items() if "/" in k or "val_" in k}
        )
        if len(record) > 2:
            self.writer.write(record)
        done = self.step >= self.total_steps
        if done or (self.ckpt_steps and self.step % self.ckpt_steps == 0):
            self.save()
