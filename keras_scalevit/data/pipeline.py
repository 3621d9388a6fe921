"""tf.data input pipelines over TFDS for ``model.fit`` on every Keras backend.

Reproducibility and exact resume come from making every random choice a pure
function of ``seed`` and a position, never of iterator state:

- epoch ``e`` visits the examples in an order fixed by ``(seed, e)`` (TFDS file
  order fixed by ``seed``, then a seeded shuffle buffer);
- the example at global stream position ``g`` gets the preprocessing seed
  ``fold_in(key, g)``; batch ``b`` gets the mixup seed ``fold_in(key', b)``.

So ``make_dataset(..., start_batch=b)`` yields exactly the batches ``b, b+1,
...`` of an uninterrupted run: it starts at epoch ``g // N`` and skips the
first ``g % N`` raw (not yet preprocessed) examples of it, ``g = b * batch``.
"""

import contextlib
import difflib
import functools
import io
import os

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from keras_scalevit.data.builder import SEED_KEY, feature_names, get_preprocess_fn
from keras_scalevit.data.mixup import mixup as _mixup
from keras_scalevit.utils.validation import (
    check_bool,
    check_int,
    check_positive_float,
    check_positive_int,
)

# Salts separating the independent random streams derived from one seed.
_SALT_SHUFFLE, _SALT_ELEMENT, _SALT_MIXUP = 1, 2, 3
_INT64_MAX = 2**63 - 1


def _check_processes(process_index, process_count):
    check_positive_int("process_count", process_count)
    check_int("process_index", process_index, minimum=0, maximum=process_count - 1)


def _check_key_name(name, value):
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a feature name (str), got {value!r}.")
    if not value:
        raise ValueError(f"`{name}` must be a non-empty feature name, got ''.")
    return value


def _check_split(builder, split):
    """Parses ``split`` against the builder's splits; returns its size."""
    if not isinstance(split, str):
        raise TypeError(
            "`split` must be a TFDS split string like 'train' or 'train[:90%]', "
            f"got {type(split).__name__}: {split!r}."
        )
    names = sorted(builder.info.splits.keys())
    if not names:  # not prepared (or mocked): reading it reports the problem
        return None
    try:
        n = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
        base = split.split("[")[0].split("+")[0].strip()
        close = difflib.get_close_matches(base, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close and base not in names else ""
        raise ValueError(
            f"`split` must be a split of {builder.name!r} ({', '.join(names)}, "
            f"optionally sliced as 'train[:90%]' or 'train[100:200]'), got "
            f"{split!r}{hint}: {str(e).splitlines()[0]}"
        ) from None
    if n <= 0:
        raise ValueError(
            f"`split` {split!r} of {builder.name!r} selects no examples "
            f"({n}); check the slice bounds."
        )
    return n


def check_batch_size(batch_size, num_devices=1, num_processes=1):
    """Checks a global batch size against the devices and processes.

    The global batch is split evenly over processes (hosts) and then over
    each process's devices, so it must be divisible by the total number of
    devices and by the number of processes.

    Args:
        batch_size: int, the global batch size.
        num_devices: int, the total number of accelerator devices (all
            processes together), e.g. ``len(jax.devices())``.
        num_processes: int, the number of processes (hosts).

    Returns:
        int, the per-process batch size.

    Raises:
        TypeError: a non-integer value.
        ValueError: a non-positive value or a batch that does not divide.

    Example:
    >>> from keras_scalevit.data import check_batch_size
    >>> check_batch_size(4096, num_devices=8, num_processes=2)
    2048
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_devices", num_devices)
    check_positive_int("num_processes", num_processes)
    for name, n in (("num_devices", num_devices), ("num_processes", num_processes)):
        if batch_size % n:
            raise ValueError(
                f"The global batch size must be divisible by {name}: received "
                f"batch_size={batch_size}, {name}={n} (remainder {batch_size % n}). "
                f"Use a multiple of {n}, e.g. {batch_size - batch_size % n or n}."
            )
    return batch_size // num_processes


def get_builder(dataset, data_dir=None, download=False):
    """Returns a prepared TFDS builder for a name or a builder.

    The embedded data sets (``scalevit_digits``) are prepared on first use, with
    no network. Other data sets must already be prepared in ``data_dir``
    unless ``download=True``.

    Args:
        dataset: str TFDS name (``"imagenet2012"``, ``"cifar10:3.0.2"``,
            ``"scalevit_digits"``) or a ``tfds.core.DatasetBuilder``.
        data_dir: TFDS data directory (None: TFDS's default,
            ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``).
        download: call ``download_and_prepare()`` (may use the network).

    Returns:
        ``tfds.core.DatasetBuilder``.

    Example:
    >>> import tempfile
    >>> from keras_scalevit.data import get_builder
    >>> get_builder("scalevit_digits", data_dir=tempfile.mkdtemp()).name
    'scalevit_digits'
    """
    check_bool("download", download)
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"`data_dir` must be a path or None, got {data_dir!r}.")
    if isinstance(dataset, tfds.core.DatasetBuilder):
        builder = dataset
    elif isinstance(dataset, str):
        try:
            builder = tfds.builder(dataset, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            known = tfds.core.registered.list_imported_builders()
            close = difflib.get_close_matches(dataset.split(":")[0], known, n=3)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ValueError(
                f"`dataset` must be a TFDS data set name such as 'imagenet2012' or "
                f"'scalevit_digits', got {dataset!r}{hint}."
            ) from None
    else:
        raise TypeError(
            "`dataset` must be a TFDS name (str) or a tfds.core.DatasetBuilder, "
            f"got {type(dataset).__name__}: {dataset!r}."
        )
    if getattr(builder, "BUILDS_OFFLINE", False):
        if not builder.is_prepared():
            # TFDS prints its "Downloading and preparing" banner to stdout;
            # nothing is downloaded here, so log one line instead.
            with contextlib.redirect_stdout(io.StringIO()):
                builder.download_and_prepare()
            logging.info("Prepared %s in %s.", builder.name, builder.data_dir)
    elif download:
        builder.download_and_prepare()
    return builder


def _load_split(builder, split, shuffle_files, seed, skip_decode):
    features = builder.info.features
    decoders = {
        k: tfds.decode.SkipDecoding()
        for k in skip_decode
        if k in features and isinstance(features[k], tfds.features.Image)
    }
    read_config = tfds.ReadConfig(
        shuffle_seed=seed,
        # Same file order every epoch: an epoch's order must not depend on how
        # many times the dataset was iterated before (resume).
        shuffle_reshuffle_each_iteration=False,
        skip_prefetch=True,
    )
    try:
        return builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            read_config=read_config,
            decoders=decoders or None,
        )
    except AssertionError as e:  # TFDS's "could not find data" error
        raise ValueError(
            f"TFDS dataset {builder.name!r} is not prepared in data_dir="
            f"{builder.data_dir!r} ({e}). Prepare it first (`tfds build`, or the "
            "manual download for ImageNet) or pass download=True."
        ) from None


def _process_split(split, process_index, process_count):
    if process_count == 1:
        return split
    return tfds.even_splits(split, n=process_count)[process_index]


def get_num_examples(
    dataset, split, *, data_dir=None, process_index=0, process_count=1
):
    """Number of examples this process reads from ``split`` per epoch.

    Args:
        dataset: TFDS name or builder (see ``get_builder``).
        split: TFDS split string, e.g. ``"train"`` or ``"train[:99%]"``.
        data_dir: TFDS data directory.
        process_index: this process's index.
        process_count: number of processes sharing the split.

    Returns:
        int.

    Example:
    >>> import tempfile
    >>> from keras_scalevit.data import get_num_examples
    >>> get_num_examples("scalevit_digits", "test", data_dir=tempfile.mkdtemp())
    359
    """
    _check_processes(process_index, process_count)
    builder = get_builder(dataset, data_dir)
    _check_split(builder, split)
    split = _process_split(split, process_index, process_count)
    n = int(_load_split(builder, split, False, None, ()).cardinality())
    if n < 0:
        n = sum(1 for _ in _load_split(builder, split, False, None, ()))
    return n


def _without_tf_global_seed(fn):
    """Runs ``fn`` with TF's global seed cleared, then restores the seed.

    The pipeline seeds every random op explicitly from ``seed``; with a global
    seed set (``keras.utils.set_random_seed``) TF would mix it into the per-epoch
    shuffle seeds (a tensor), which fails while tracing and would make the data
    order depend on global state.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from tensorflow.python.eager import context

        saved = context.global_seed()
        if saved is None:
            return fn(*args, **kwargs)
        tf.random.set_seed(None)
        try:
            return fn(*args, **kwargs)
        finally:
            tf.random.set_seed(saved)

    return wrapper


@_without_tf_global_seed
def make_dataset(
    dataset,
    split,
    pp,
    batch_size,
    *,
    data_dir=None,
    seed=0,
    shuffle=True,
    shuffle_buffer=50_000,
    cache=False,
    repeat=True,
    drop_remainder=True,
    start_batch=0,
    mixup_p=None,
    image_key="image",
    label_key="labels",
    skip_decode=("image",),
    process_index=0,
    process_count=1,
    num_devices=None,
    download=False,
    num_parallel_calls=tf.data.AUTOTUNE,
    prefetch=tf.data.AUTOTUNE,
):
    """A reproducible ``tf.data`` pipeline of ``(images, labels)`` batches.

    TFDS examples (images left encoded, as big_vision) go through the pp
    string per example, are batched, optionally mixed up, and become
    ``(features[image_key], features[label_key])`` tuples for ``model.fit``.
    The same arguments give the same batches on every run and backend;
    ``start_batch=b`` resumes exactly at batch ``b`` of that sequence.

    Args:
        dataset: TFDS name (``"imagenet2012"``, ``"scalevit_digits"``) or a
            ``tfds.core.DatasetBuilder``.
        split: TFDS split string.
        pp: pp string, e.g. ``"decode|inception_crop(224)|flip_lr|
            value_range(-1, 1)|onehot(1000, key='label', key_result='labels')"``.
        batch_size: int, the global batch size (split over processes).
        data_dir: TFDS data directory.
        seed: int, fixes file order, shuffles, augmentations and mixup.
        shuffle: shuffle files and examples (seeded, per epoch).
        shuffle_buffer: examples in the shuffle buffer.
        cache: False, True (cache the raw examples in memory) or a file path.
        repeat: loop over epochs forever (training); False gives one pass.
        drop_remainder: drop the last partial batch.
        start_batch: int >= 0, the first batch to yield (resume position).
        mixup_p: None, or the Beta concentration ``p`` of batch mixup.
        image_key: the feature returned as model input.
        label_key: the feature returned as target.
        skip_decode: Image features to leave encoded (decode them with the
            ``decode`` op, or crop-decode JPEGs with
            ``decode_jpeg_and_inception_crop``).
        process_index: this process's index (e.g. ``jax.process_index()``).
        process_count: number of processes; each reads an even share.
        num_devices: if given, the total number of devices; checks that the
            global batch divides (see ``check_batch_size``).
        download: allow ``download_and_prepare()`` for non-embedded datasets.
        num_parallel_calls: parallelism of the preprocessing map.
        prefetch: batches to prefetch (None: no prefetch).

    Returns:
        ``tf.data.Dataset`` of ``(images, labels)`` with per-process batches.

    Raises:
        TypeError: an argument of the wrong kind (a float ``batch_size``, a
            non-bool ``shuffle``, a non-str ``split``, an unknown pp-op keyword).
        ValueError: a bad value, before anything is read: a batch that does
            not divide over processes/devices, ``shuffle_buffer < 1``,
            ``start_batch < 0``, ``process_index`` outside
            ``[0, process_count)``, ``mixup_p <= 0``, an unknown data set
            (with close names), a split that does not exist or selects no
            example, a bad pp string (see ``get_preprocess_fn``).

    Example:
    >>> import tempfile
    >>> from keras_scalevit.data import make_dataset
    >>> ds = make_dataset(
    ...     "scalevit_digits", "train",
    ...     "decode|resize(32)|value_range(-1, 1)|onehot(10, key='label', key_result='labels')",
    ...     batch_size=8, data_dir=tempfile.mkdtemp())
    >>> images, labels = next(iter(ds))
    >>> images.shape.as_list(), labels.shape.as_list()
    ([8, 32, 32, 3], [8, 10])
    """
    _check_processes(process_index, process_count)
    if num_devices is not None:
        check_positive_int("num_devices", num_devices)
    local_batch = check_batch_size(batch_size, num_devices or 1, process_count)
    check_int("seed", seed, minimum=-(2**63), maximum=2**63 - 1)  # int64
    for name, value in (
        ("shuffle", shuffle),
        ("repeat", repeat),
        ("drop_remainder", drop_remainder),
    ):
        check_bool(name, value)
    check_positive_int("shuffle_buffer", shuffle_buffer)
    check_int("start_batch", start_batch, minimum=0)
    if not (cache is False or cache is True or isinstance(cache, (str, os.PathLike))):
        raise TypeError(f"`cache` must be True, False or a file path, got {cache!r}.")
    if mixup_p is not None:
        check_positive_float("mixup_p", mixup_p)
    _check_key_name("image_key", image_key)
    _check_key_name("label_key", label_key)
    if image_key == label_key:
        raise ValueError(
            f"`label_key` must differ from `image_key`, got both {image_key!r}."
        )
    if isinstance(skip_decode, str):
        skip_decode = (skip_decode,)  # one feature name, not its characters
    skip_decode = tuple(skip_decode or ())
    for i, k in enumerate(skip_decode):
        _check_key_name(f"skip_decode[{i}]", k)
    if num_parallel_calls != tf.data.AUTOTUNE:
        check_positive_int("num_parallel_calls", num_parallel_calls)
    if prefetch is not None and prefetch != tf.data.AUTOTUNE:
        check_int("prefetch", prefetch, minimum=0)
    pp_fn = get_preprocess_fn(pp)

    builder = get_builder(dataset, data_dir, download)
    _check_split(builder, split)
    split = _process_split(split, process_index, process_count)
    base = _load_split(builder, split, shuffle, seed, skip_decode)
    num_examples = int(base.cardinality())
    if num_examples == 0:
        raise ValueError(f"Split {split!r} of {builder.name!r} is empty.")
    if cache is True:
        base = base.cache()
    elif isinstance(cache, str):
        base = base.cache(cache)

    key = tf.constant([seed, process_index], tf.int64)
    fold = tf.random.experimental.stateless_fold_in
    shuffle_key, element_key, mixup_key = (
        fold(key, s) for s in (_SALT_SHUFFLE, _SALT_ELEMENT, _SALT_MIXUP)
    )

    def _epoch(epoch):
        if not shuffle:
            return base
        epoch_seed = tf.random.stateless_uniform(
            [], fold(shuffle_key, epoch), minval=0, maxval=2**62, dtype=tf.int64
        )
        return base.shuffle(
            shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False
        )

    start = start_batch * local_batch
    if repeat and num_examples > 0:
        first_epoch, offset = divmod(start, num_examples)
        epochs = tf.data.Dataset.range(first_epoch, _INT64_MAX)
    else:  # unknown size, or a single pass: skip from the beginning.
        first_epoch, offset = 0, start
        epochs = tf.data.Dataset.range(_INT64_MAX if repeat else 1)
    stream = epochs.flat_map(_epoch).skip(offset)
    stream = tf.data.Dataset.zip(tf.data.Dataset.counter(start), stream)

    def _preprocess(position, features):
        features = dict(features)
        features[SEED_KEY] = fold(element_key, position)
        out = pp_fn(features)
        missing = [k for k in (image_key, label_key) if k not in out]
        if missing:
            raise ValueError(
                f"After the pp string {pp!r} the features are {feature_names(out)}, but "
                f"make_dataset needs {missing} (image_key={image_key!r}, "
                f"label_key={label_key!r}). End the pp string with e.g. "
                f"onehot(..., key='label', key_result={label_key!r})."
            )
        return {image_key: out[image_key], label_key: out[label_key]}

    ds = stream.map(
        _preprocess, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    ds = ds.batch(local_batch, drop_remainder=drop_remainder)
    if mixup_p is not None:
        ds = tf.data.Dataset.zip(tf.data.Dataset.counter(start_batch), ds)
        ds = ds.map(
            lambda b, batch: _mixup(
                batch, mixup_p, fold(mixup_key, b), keys=(image_key, label_key)
            )
        )
    ds = ds.map(lambda batch: (batch[image_key], batch[label_key]))
    if prefetch is not None:
        ds = ds.prefetch(prefetch)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def make_eval_dataset(
    dataset,
    split,
    pp,
    batch_size,
    *,
    data_dir=None,
    cache=False,
    image_key="image",
    label_key="labels",
    skip_decode=("image",),
    process_index=0,
    process_count=1,
    num_devices=None,
    download=False,
    num_parallel_calls=tf.data.AUTOTUNE,
    prefetch=tf.data.AUTOTUNE,
):
    """One ordered pass over a split, keeping the last partial batch.

    ``make_dataset`` with ``shuffle=False, repeat=False, drop_remainder=False``
    (random ops in ``pp`` still use seed 0, so the pass is reproducible).

    Args:
        dataset: TFDS name or builder.
        split: TFDS split string.
        pp: pp string, e.g. ``"decode|resize_small(256)|central_crop(224)|
            value_range(-1, 1)|onehot(1000, key='label', key_result='labels')"``.
        batch_size: int, the global batch size.
        data_dir: TFDS data directory.
        cache: False, True (raw examples in memory) or a file path.
        image_key: the feature returned as model input.
        label_key: the feature returned as target.
        skip_decode: Image features to leave encoded.
        process_index: this process's index.
        process_count: number of processes.
        num_devices: if given, checks that the global batch divides.
        download: allow ``download_and_prepare()``.
        num_parallel_calls: parallelism of the preprocessing map.
        prefetch: batches to prefetch (None: no prefetch).

    Returns:
        ``tf.data.Dataset`` of ``(images, labels)``.

    Example:
    >>> import tempfile
    >>> from keras_scalevit.data import make_eval_dataset
    >>> ds = make_eval_dataset(
    ...     "scalevit_digits", "test",
    ...     "decode|value_range(-1, 1)|onehot(10, key='label', key_result='labels')",
    ...     batch_size=100, data_dir=tempfile.mkdtemp())
    >>> [int(x.shape[0]) for x, _ in ds]
    [100, 100, 100, 59]
    """
    return make_dataset(
        dataset,
        split,
        pp,
        batch_size,
        data_dir=data_dir,
        seed=0,
        shuffle=False,
        cache=cache,
        repeat=False,
        drop_remainder=False,
        image_key=image_key,
        label_key=label_key,
        skip_decode=skip_decode,
        process_index=process_index,
        process_count=process_count,
        num_devices=num_devices,
        download=download,
        num_parallel_calls=num_parallel_calls,
        prefetch=prefetch,
    )
