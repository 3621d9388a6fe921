"""``FewShotEvaluator``: big_vision's few-shot linear evaluation as a Keras callback.

How the numbers reach Keras' loggers (Keras 3.15): ``CallbackList`` hands the
*same* logs dict to every callback in list order, and ``fit`` appends its
``History`` and progress bar after the user's callbacks. The evaluator adds its
results to that dict in place, so:

- the progress bar and ``History`` always see them;
- ``CSVLogger`` and ``TensorBoard`` see them only if they come *after* the
  evaluator in ``callbacks=[...]``;
- results computed at a step (``every_n_steps``) go into that step's batch logs
  (progress bar; TensorBoard with an integer ``update_freq``) and are carried
  into the logs of the epoch in which they were computed, which is what
  ``History``, ``CSVLogger`` and epoch-level TensorBoard record (the last
  evaluation of the epoch wins);
- ``CSVLogger`` fixes its columns at the first epoch it sees: if the first
  evaluation comes after epoch 1, it never writes the few-shot columns (use
  ``every_n_epochs=1``, or read ``FewShotEvaluator.history``).

``FewShotEvaluator.history`` keeps every evaluation with its step, including the
per-seed numbers and the one at the end of training.
"""

import os
import time

import keras
import numpy as np

from keras_scalevit.evaluation import fewshot
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_kwargs,
    check_positive_int,
)

# big_vision's `configs/common_fewshot.py` preprocessing: a square resize.
DEFAULT_PP = "decode|resize(256)|central_crop(224)|value_range(-1,1)"

_CONFIG_KEYS = {
    "datasets",
    "shots",
    "l2_reg",
    "num_seeds",
    "pp_train",
    "pp_eval",
    "log_steps",
    "every_n_steps",
    "every_n_epochs",
    "at_train_end",
    "batch_size",
    "prefix",
    "log_per_seed",
    "l2_sweep",
    "data_dir",
    # Accepted for compatibility with big_vision's fewshot config:
    "type",
    "representation_layer",
    "display_first",
}


def _is_tf_dataset(data):
    return hasattr(data, "as_numpy_iterator") and hasattr(data, "element_spec")


def _split_element(element, where):
    """(images, labels) from a dataset element: a pair or an image/label dict."""
    if isinstance(element, dict):
        if "image" not in element or "label" not in element:
            raise ValueError(
                f"{where}: dataset elements that are dicts need 'image' and "
                f"'label' keys; received keys {sorted(element)}."
            )
        return element["image"], element["label"]
    if isinstance(element, (tuple, list)) and len(element) >= 2:
        return element[0], element[1]
    raise ValueError(
        f"{where}: dataset elements must be (images, labels) pairs or dicts with "
        f"'image' and 'label'; received {type(element).__name__}."
    )


def tfds_split_loader(pp_builder=None, data_dir=None):
    """A ``load_split`` hook that reads TFDS splits lazily.

    The returned function ``load_split(tfds_name, split, pp)`` builds a
    ``tf.data.Dataset`` of (image, label) pairs: ``tfds.load`` with images left
    encoded (big_vision's ``decode`` op decodes them), mapped through
    ``pp_builder(pp)``, which takes and returns a features dict. Nothing is read
    until the evaluator first runs.

    Args:
        pp_builder: callable ``pp_string -> fn(features dict) -> features dict``;
            defaults to ``keras_scalevit.data.get_preprocess_fn``.
        data_dir: optional TFDS data directory.

    Returns:
        callable ``(tfds_name, split, pp) -> tf.data.Dataset``.

    Example:

    >>> from keras_scalevit.evaluation import tfds_split_loader
    >>> load_split = tfds_split_loader(pp_builder=lambda pp: (lambda ex: ex))
    >>> callable(load_split)
    True
    """

    if pp_builder is not None and not callable(pp_builder):
        raise TypeError(
            "`pp_builder` must be callable (pp string -> features function) or "
            f"None, got {type(pp_builder).__name__}."
        )
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"`data_dir` must be a path or None, got {data_dir!r}.")

    def load_split(tfds_name, split, pp):
        import tensorflow as tf
        import tensorflow_datasets as tfds

        builder = pp_builder
        if builder is None:
            try:
                from keras_scalevit.data import get_preprocess_fn as builder
            except ImportError as error:
                raise ImportError(
                    "Few-shot TFDS loading needs a preprocessing builder: pass "
                    "`pp_builder=` (pp string -> features fn) since "
                    "`keras_scalevit.data.get_preprocess_fn` is unavailable."
                ) from error
        ds = tfds.load(
            tfds_name,
            split=split,
            data_dir=data_dir,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        preprocess = builder(pp) if pp else (lambda features: features)
        from keras_scalevit.data.builder import SEED_KEY

        def to_pair(index, features):
            features = dict(features)
            # A fixed per-example seed: random pp ops (if any) draw the same
            # values at every evaluation, so the features are reproducible.
            features[SEED_KEY] = tf.stack([tf.constant(0, tf.int64), index])
            out = preprocess(features)
            return tf.cast(out["image"], tf.float32), out["label"]

        return ds.enumerate().map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)

    return load_split


class FewShotEvaluator(keras.callbacks.Callback):
    """Keras callback logging big_vision's few-shot accuracies during training.

    At every evaluation the representation of every train and test example of
    each data set is computed with the model (batched, through Keras' compiled
    ``predict_on_batch``), then ``fewshot_evaluate`` draws the shots for each
    seed and solves in float64 NumPy. For each data set and shot count ``k``
    the logs get ``"<prefix><dataset>_<k>shot"``, the mean over seeds (with
    ``log_per_seed``, also big_vision's per-seed ``..._<k>shot-seed-<s>``; with
    ``l2_sweep``, the separate ``..._<k>shot-l2sweep`` numbers). See the module
    docstring for how these reach ``History``, ``CSVLogger`` and TensorBoard.

    The representation is, in order of preference: ``representation_fn`` if
    given; else the model's ``representation_model`` attribute (a
    ``ViTClassifier``'s pre-logits); else the model itself, which must then
    output features (e.g. ``num_classes=0``). Keras models run through
    ``predict_on_batch``, compiled as Keras compiles ``predict`` on each
    backend (XLA on JAX; a ``tf.function`` on TensorFlow, with XLA where the
    model's ``jit_compile`` resolves to it; eager on torch unless
    ``jit_compile`` is set). Evaluating inside ``fit`` does not change the
    training trajectory (tested on all three backends).

    Args:
        datasets: dict ``name -> (train, test)``, ``(train, test,
            num_classes)`` or ``{"train", "test", "num_classes"}``. ``train``
            and ``test`` are ``(images, labels)`` arrays, a ``tf.data.Dataset``
            of (images, labels) or ``{"image", "label"}`` elements (batched or
            not), or a zero-argument callable returning one of these (called at
            the first evaluation, once). ``num_classes`` defaults to one more
            than the largest label seen.
        shots: positive ints, shots per class (default 1, 5, 10, 25).
        num_seeds: positive int, seeds ``0 .. num_seeds - 1`` (default 3).
        l2_reg: positive float, the ridge penalty (default 1024).
        every_n_steps: optional positive int; evaluate after every optimizer
            step that is a multiple of it (counted from ``optimizer.iterations``
            at the start of ``fit``).
        every_n_epochs: optional positive int; evaluate at the end of every
            n-th epoch.
        at_train_end: bool; evaluate the final model unless it was just
            evaluated (at the last epoch's end, so ``History`` records it).
        batch_size: positive int, images per representation batch; the last
            batch is zero-padded so the compiled function keeps one shape.
        representation_fn: optional ``keras.Model`` or callable
            ``images -> (N, R) features`` used instead of the model.
        prefix: str prepended to every log key (default ``"fewshot/"``).
        log_per_seed: bool; also log big_vision's per-seed numbers.
        l2_sweep: ``None``, ``True`` or a sequence of l2 values; also log the
            accuracy at an l2 chosen on held-out training shots (not
            big_vision's number).
        keep_features: bool; keep the last extracted features in
            ``self.features`` (``name -> (train_x, train_y, test_x, test_y)``).

    Example:

    >>> import keras, numpy as np
    >>> from keras_scalevit.evaluation import FewShotEvaluator
    >>> inputs = keras.Input((8,))
    >>> feats = keras.layers.Dense(4, activation="tanh", name="pre_logits")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(3)(feats))
    >>> model.representation_model = keras.Model(inputs, feats)
    >>> model.compile("sgd", "sparse_categorical_crossentropy")
    >>> x = np.random.default_rng(0).normal(size=(60, 8)).astype("float32")
    >>> y = np.arange(60) % 3
    >>> evaluator = FewShotEvaluator({"toy": ((x, y), (x, y))}, shots=(1, 5))
    >>> history = model.fit(x, y, epochs=1, callbacks=[evaluator], verbose=0)
    >>> sorted(k for k in history.history if k.startswith("fewshot/"))
    ['fewshot/toy_1shot', 'fewshot/toy_5shot']
    """

    def __init__(
        self,
        datasets,
        *,
        shots=fewshot.DEFAULT_SHOTS,
        num_seeds=fewshot.DEFAULT_NUM_SEEDS,
        l2_reg=fewshot.DEFAULT_L2_REG,
        every_n_steps=None,
        every_n_epochs=None,
        at_train_end=True,
        batch_size=256,
        representation_fn=None,
        prefix="fewshot/",
        log_per_seed=False,
        l2_sweep=None,
        keep_features=False,
    ):
        super().__init__()
        self.datasets = self._check_datasets(datasets)
        self.shots = fewshot._check_shots(shots)
        self.num_seeds = check_positive_int("num_seeds", num_seeds)
        self.l2_reg = fewshot._check_l2(l2_reg)
        self.every_n_steps = self._check_optional_positive(
            every_n_steps, "every_n_steps"
        )
        self.every_n_epochs = self._check_optional_positive(
            every_n_epochs, "every_n_epochs"
        )
        self.at_train_end = check_bool("at_train_end", at_train_end)
        if (
            self.every_n_steps is None
            and self.every_n_epochs is None
            and not self.at_train_end
        ):
            raise ValueError(
                "`at_train_end` must be True when neither `every_n_steps` nor "
                "`every_n_epochs` is given (the evaluator would never run), got "
                "at_train_end=False."
            )
        self.batch_size = check_positive_int("batch_size", batch_size)
        if representation_fn is not None and not callable(representation_fn):
            raise TypeError(
                "`representation_fn` must be callable (images -> features) or "
                f"None, got {type(representation_fn).__name__}."
            )
        self.representation_fn = representation_fn
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a str, got {prefix!r}.")
        self.prefix = prefix
        self.log_per_seed = check_bool("log_per_seed", log_per_seed)
        if l2_sweep is not None and l2_sweep is not False and l2_sweep is not True:
            l2_sweep = tuple(fewshot._check_l2_grid(l2_sweep, "l2_sweep"))
        self.l2_sweep = l2_sweep or None
        self.keep_features = check_bool("keep_features", keep_features)
        self.features = {}
        self.history = []
        self._resolved = {}
        self._step = 0
        self._epoch_start_step = 0
        self._last_eval_step = None
        self._epoch_results = {}

    # ---------------------------------------------------------------- config

    @classmethod
    def from_config(
        cls,
        config,
        *,
        load_split=None,
        pp_builder=None,
        representation_fn=None,
    ):
        """Builds an evaluator from a big_vision-style few-shot config.

        Keys (a dict or ``ml_collections.ConfigDict``; unknown keys are an
        error): ``datasets`` ``{name: (tfds_name, train_split, test_split[,
        num_classes])}`` (required), ``shots``, ``l2_reg``, ``num_seeds``,
        ``pp_train``, ``pp_eval`` (default
        ``"decode|resize(256)|central_crop(224)|value_range(-1,1)"``),
        ``every_n_steps`` (or big_vision's ``log_steps``), ``every_n_epochs``,
        ``at_train_end``, ``batch_size``, ``prefix``, ``log_per_seed``,
        ``l2_sweep``, ``data_dir``; big_vision's ``type``,
        ``representation_layer`` (only ``"pre_logits"``) and ``display_first``
        are accepted and otherwise ignored. Data are loaded at the first
        evaluation.

        Args:
            config: dict or ConfigDict as above.
            load_split: optional callable ``(tfds_name, split, pp) ->`` data
                (anything ``datasets`` accepts); defaults to
                ``tfds_split_loader(pp_builder, data_dir)``.
            pp_builder: optional callable ``pp -> features fn`` for the default
                loader.
            representation_fn: passed to the constructor.

        Returns:
            A ``FewShotEvaluator``.

        Example:

        >>> from keras_scalevit.evaluation import FewShotEvaluator
        >>> evaluator = FewShotEvaluator.from_config(
        ...     {"datasets": {"cifar10": ("cifar10", "train[:1000]", "test")},
        ...      "log_steps": 1000}
        ... )
        >>> evaluator.every_n_steps, evaluator.shots
        (1000, (1, 5, 10, 25))
        """
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        if not isinstance(config, dict):
            raise TypeError(
                "`config` must be a dict or ml_collections.ConfigDict, got "
                f"{type(config).__name__}."
            )
        check_kwargs("The few-shot config", config, _CONFIG_KEYS)
        check_choice("config.type", config.get("type", "fewshot_lsr"), ("fewshot_lsr",))
        # Only the model's representation_model (pre-logits) is supported.
        check_choice(
            "config.representation_layer",
            config.get("representation_layer", "pre_logits"),
            ("pre_logits",),
        )
        datasets_cfg = config.get("datasets")
        if hasattr(datasets_cfg, "to_dict"):
            datasets_cfg = datasets_cfg.to_dict()
        if datasets_cfg is not None and not isinstance(datasets_cfg, dict):
            raise TypeError(
                "config `datasets` must be a dict {name: (tfds_name, train_split, "
                f"test_split)}}, got {type(datasets_cfg).__name__}."
            )
        if not datasets_cfg:
            raise ValueError(
                "config needs `datasets`: {name: (tfds_name, train_split, "
                f"test_split)}}; got {datasets_cfg!r}."
            )
        if "log_steps" in config and "every_n_steps" in config:
            raise ValueError(
                "Give one of config `log_steps` and `every_n_steps`; received "
                f"both ({config['log_steps']!r}, {config['every_n_steps']!r})."
            )
        if load_split is not None and not callable(load_split):
            raise TypeError(
                "`load_split` must be callable (tfds_name, split, pp) -> data, or "
                f"None, got {type(load_split).__name__}."
            )
        if load_split is None:
            load_split = tfds_split_loader(
                pp_builder=pp_builder, data_dir=config.get("data_dir")
            )
        pp_train = config.get("pp_train", DEFAULT_PP)
        pp_eval = config.get("pp_eval", DEFAULT_PP)
        datasets = {}
        for name, spec in datasets_cfg.items():
            spec = tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)
            if len(spec) not in (3, 4) or not all(isinstance(v, str) for v in spec[:3]):
                raise ValueError(
                    f"config `datasets[{name!r}]` must be (tfds_name, "
                    f"train_split, test_split[, num_classes]); received {spec!r}."
                )
            tfds_name, train_split, test_split = spec[:3]
            datasets[name] = {
                "train": _Deferred(load_split, tfds_name, train_split, pp_train),
                "test": _Deferred(load_split, tfds_name, test_split, pp_eval),
                "num_classes": spec[3] if len(spec) == 4 else None,
            }
        kwargs = {}
        for key in (
            "shots",
            "l2_reg",
            "num_seeds",
            "every_n_epochs",
            "at_train_end",
            "batch_size",
            "prefix",
            "log_per_seed",
            "l2_sweep",
        ):
            if key in config:
                kwargs[key] = config[key]
        every = config.get("every_n_steps", config.get("log_steps"))
        if every is not None:
            kwargs["every_n_steps"] = every
        return cls(datasets, representation_fn=representation_fn, **kwargs)

    # ------------------------------------------------------------ arguments

    @staticmethod
    def _check_optional_positive(value, name):
        if value is None:
            return None
        return check_positive_int(name, value)

    @staticmethod
    def _check_datasets(datasets):
        what = "a non-empty dict name -> (train, test[, num_classes])"
        if not isinstance(datasets, dict):
            raise TypeError(f"`datasets` must be {what}, got {datasets!r:.200}.")
        if not datasets:
            raise ValueError(f"`datasets` must be {what}, got an empty dict.")
        out = {}
        for name, spec in datasets.items():
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"`datasets` keys must be non-empty strings; received {name!r}."
                )
            if isinstance(spec, dict):
                missing = {"train", "test"} - set(spec)
                if missing:
                    raise ValueError(
                        f"`datasets[{name!r}]` needs 'train' and 'test'; missing "
                        f"{sorted(missing)}."
                    )
                train, test = spec["train"], spec["test"]
                num_classes = spec.get("num_classes")
            elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
                train, test = spec[0], spec[1]
                num_classes = spec[2] if len(spec) == 3 else None
            else:
                raise ValueError(
                    f"`datasets[{name!r}]` must be (train, test), (train, test, "
                    "num_classes) or a dict with 'train' and 'test'; received "
                    f"{type(spec).__name__}."
                )
            if num_classes is not None:
                num_classes = check_positive_int(
                    f"datasets[{name!r}] num_classes", num_classes
                )
            out[name] = {"train": train, "test": test, "num_classes": num_classes}
        return out

    # ------------------------------------------------------------ extraction

    def _representation(self, model):
        """The callable images -> numpy features for this evaluation."""
        fn = self.representation_fn
        if fn is not None and not isinstance(fn, keras.Model):
            return lambda x: keras.ops.convert_to_numpy(fn(x))
        # A Keras model goes through its compiled `predict_on_batch`.
        rep = fn if fn is not None else getattr(model, "representation_model", None)
        if rep is None:
            num_classes = getattr(model, "num_classes", 0)
            if num_classes:
                raise ValueError(
                    "FewShotEvaluator needs features: the model has "
                    f"num_classes={num_classes} and no `representation_model`; "
                    "pass `representation_fn=` or a model with num_classes=0."
                )
            rep = model
        if rep is None or not isinstance(rep, keras.Model):
            raise ValueError(
                "FewShotEvaluator has no model to extract features with: use it "
                "as a callback in `fit`, pass `model=` to `evaluate`, or give "
                f"`representation_fn`; received {type(rep).__name__}."
            )
        batch_size = self.batch_size

        def run(images):
            images = np.asarray(images)
            n = images.shape[0]
            if n < batch_size:
                # One compiled shape for every batch (JAX/TF would retrace).
                pad = np.zeros((batch_size - n,) + images.shape[1:], images.dtype)
                images = np.concatenate([images, pad], axis=0)
            out = rep.predict_on_batch(images)
            if isinstance(out, (dict, list, tuple)):
                raise ValueError(
                    "The representation model must return one (N, R) tensor; "
                    f"received a {type(out).__name__}."
                )
            return np.asarray(out)[:n]

        return run

    def _resolve(self, name, which):
        key = (name, which)
        if key not in self._resolved:
            data = self.datasets[name][which]
            if callable(data) and not _is_tf_dataset(data):
                data = data()
            if _is_tf_dataset(data):
                spec = data.element_spec
                label_spec = spec["label"] if isinstance(spec, dict) else spec[1]
                if len(label_spec.shape) == 0:
                    data = data.batch(self.batch_size)
            elif isinstance(data, (tuple, list)) and len(data) == 2:
                images, labels = np.asarray(data[0]), np.asarray(data[1])
                if images.shape[0] != labels.shape[0]:
                    raise ValueError(
                        f"`datasets[{name!r}]['{which}']` has {images.shape[0]} "
                        f"images but {labels.shape[0]} labels; they must agree."
                    )
                data = (images, labels)
            else:
                raise ValueError(
                    f"`datasets[{name!r}]['{which}']` must be (images, labels) "
                    "arrays, a tf.data.Dataset or a callable returning one; "
                    f"received {type(data).__name__}."
                )
            self._resolved[key] = data
        return self._resolved[key]

    def _batches(self, data, where):
        if isinstance(data, tuple):
            images, labels = data
            for start in range(0, images.shape[0], self.batch_size):
                stop = start + self.batch_size
                yield images[start:stop], labels[start:stop]
        else:
            for element in data.as_numpy_iterator():
                yield _split_element(element, where)

    def _extract(self, embed, name, which):
        where = f"datasets[{name!r}]['{which}']"
        feats, labels = [], []
        for images, batch_labels in self._batches(self._resolve(name, which), where):
            batch_labels = np.asarray(batch_labels)
            if batch_labels.ndim != 1 or not np.issubdtype(
                batch_labels.dtype, np.integer
            ):
                raise ValueError(
                    f"{where}: labels must be integer class ids, one per image "
                    f"(not one-hot); received a batch of shape "
                    f"{batch_labels.shape} and dtype {batch_labels.dtype}."
                )
            out = embed(images)
            if out.ndim != 2 or out.shape[0] != batch_labels.shape[0]:
                raise ValueError(
                    f"{where}: the representation of a batch of "
                    f"{batch_labels.shape[0]} images must have shape (N, R); "
                    f"received {out.shape}."
                )
            feats.append(out)
            labels.append(batch_labels)
        if not feats:
            raise ValueError(f"{where} yielded no examples.")
        return np.concatenate(feats), np.concatenate(labels)

    # ------------------------------------------------------------ evaluation

    def evaluate(self, model=None):
        """Runs the few-shot evaluation now and returns the full results.

        Args:
            model: the model to extract features with; defaults to the model
                the callback is attached to.

        Returns:
            dict of log key -> float (mean over seeds, per-seed and l2-sweep
            entries, all prefixed with ``prefix``).

        Example:
        >>> import keras, numpy as np
        >>> from keras_scalevit.evaluation import FewShotEvaluator
        >>> inputs = keras.Input((8,))
        >>> feats = keras.layers.Dense(4, activation="tanh")(inputs)
        >>> model = keras.Model(inputs, feats)
        >>> x = np.random.default_rng(0).normal(size=(30, 8)).astype("float32")
        >>> y = np.arange(30) % 3
        >>> evaluator = FewShotEvaluator({"toy": ((x, y), (x, y))}, shots=(2,))
        >>> results = evaluator.evaluate(model)
        >>> 0.0 <= results["fewshot/toy_2shot"] <= 1.0
        True
        """
        if model is None:
            model = getattr(self, "_model", None)
            if model is not None:
                # On JAX, reading `self.model` copies the training state into
                # the variables, so the representation sees current weights.
                model = self.model
        embed = self._representation(model)
        results = {}
        for name, spec in self.datasets.items():
            x_train, y_train = self._extract(embed, name, "train")
            x_test, y_test = self._extract(embed, name, "test")
            num_classes = spec["num_classes"]
            if num_classes is None:
                num_classes = int(max(y_train.max(), y_test.max())) + 1
            if self.keep_features:
                self.features[name] = (x_train, y_train, x_test, y_test)
            try:
                out = fewshot.fewshot_evaluate(
                    x_train,
                    y_train,
                    x_test,
                    y_test,
                    num_classes=num_classes,
                    name=name,
                    shots=self.shots,
                    seeds=tuple(range(self.num_seeds)),
                    l2_reg=self.l2_reg,
                    l2_sweep=self.l2_sweep,
                    per_seed=True,
                )
            except ValueError as e:
                # The features are the model's representations of the data set.
                raise ValueError(f"FewShotEvaluator, data set {name!r}: {e}") from None
            results.update({self.prefix + k: v for k, v in out.items()})
        return results

    def _loggable(self, results):
        if self.log_per_seed:
            return dict(results)
        return {k: v for k, v in results.items() if "-seed-" not in k}

    def _run(self, logs, epoch):
        start = time.perf_counter()
        results = self.evaluate()
        self._last_eval_step = self._step
        self.history.append(
            {
                "step": self._step,
                "epoch": epoch,
                "seconds": time.perf_counter() - start,
                "results": results,
            }
        )
        loggable = self._loggable(results)
        if logs is not None:
            logs.update(loggable)
        return loggable

    # ------------------------------------------------------------ callbacks

    def on_train_begin(self, logs=None):
        step = 0
        optimizer = getattr(self._model, "optimizer", None)
        if optimizer is not None and getattr(optimizer, "built", False):
            step = int(
                keras.ops.convert_to_numpy(self.model.optimizer.iterations.value)
            )
        self._step = step
        self._epoch_start_step = step
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start_step = self._step
        self._epoch_results = {}

    def on_train_batch_end(self, batch, logs=None):
        previous = self._step
        # `batch` is the last step of the execution (steps_per_execution > 1
        # reports every k-th batch only).
        self._step = self._epoch_start_step + int(batch) + 1
        n = self.every_n_steps
        if n and self._step // n > previous // n:
            self._epoch_results.update(self._run(logs, self._epoch))

    def on_epoch_end(self, epoch, logs=None):
        due = bool(self.every_n_epochs) and (epoch + 1) % self.every_n_epochs == 0
        last = (
            self.at_train_end
            and self.params is not None
            and self.params.get("epochs") == epoch + 1
        )
        if (due or last) and self._last_eval_step != self._step:
            self._epoch_results.update(self._run(None, epoch))
        if logs is not None:
            logs.update(self._epoch_results)
        self._epoch_results = {}

    def on_train_end(self, logs=None):
        if self.at_train_end and self._last_eval_step != self._step:
            self._run(logs, getattr(self, "_epoch", None))


class _Deferred:
    """A zero-argument callable that loads one split on first use."""

    def __init__(self, load_split, tfds_name, split, pp):
        self.load_split = load_split
        self.args = (tfds_name, split, pp)

    def __call__(self):
        return self.load_split(*self.args)

    def __repr__(self):
        return f"_Deferred{self.args!r}"
