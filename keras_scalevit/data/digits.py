"""The embedded default data set: scikit-learn's digits as a TFDS dataset.

1797 real handwritten digits (8x8 grey, 10 classes; UCI "Optical Recognition
of Handwritten Digits", CC BY 4.0) ship inside the scikit-learn wheel, so this
builds with no network and then takes the same ``tfds`` path as ImageNet.

Images are stored at their native 8x8 resolution -- no pixels are invented;
upscaling belongs in the pp string (e.g. ``resize(32)``). The 17 grey levels
0..16 map to uint8 by ``(v * 255 + 8) // 16`` (round half up, so 0 -> 0 and
16 -> 255) and are replicated to 3 channels. Splits are stratified and fixed:
per class, a NumPy ``default_rng(0)`` permutation of that class's rows in
sklearn order; the first 20% (rounded) go to ``test``, the rest to ``train``
(1438 train / 359 test).
"""

import numpy as np
import tensorflow_datasets as tfds

DIGITS_NAME = "scalevit_digits"
TEST_FRACTION = 0.2
SPLIT_SEED = 0

_CITATION = """\
@misc{alpaydin1998optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}"""


def digits_split_indices():
    """Row indices (into ``sklearn.datasets.load_digits``) of the two splits.

    Returns:
        dict ``{"train": int array, "test": int array}``, each sorted.

    Example:
    >>> from keras_scalevit.data.digits import digits_split_indices
    >>> {k: len(v) for k, v in digits_split_indices().items()}
    {'train': 1438, 'test': 359}
    """
    from sklearn.datasets import load_digits

    labels = load_digits().target
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(labels == c))
        test.extend(rows[: int(round(TEST_FRACTION * len(rows)))])
    test = np.sort(np.asarray(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test}


def digits_to_uint8(images):
    """Maps sklearn digit grey levels 0..16 to uint8 0..255, 3 channels.

    Args:
        images: array (..., 8, 8) of the integer grey levels 0..16 (any
            other value is a ``ValueError``).

    Returns:
        uint8 array (..., 8, 8, 3).

    Example:
    >>> import numpy as np
    >>> from keras_scalevit.data.digits import digits_to_uint8
    >>> digits_to_uint8(np.array([[0, 8, 16]]))[0, :, 0].tolist()
    [0, 128, 255]
    """
    v = np.asarray(images)
    if v.size and (
        not np.all(np.isfinite(v))
        or np.any(v != np.round(v))
        or v.min() < 0
        or v.max() > 16
    ):
        raise ValueError(
            "`images` must hold the integer grey levels 0..16 of sklearn's "
            f"digits, got values in [{v.min()}, {v.max()}]."
        )
    v = v.astype(np.int64)
    grey = ((v * 255 + 8) // 16).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


class ScalevitDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits (8x8, 10 classes) as a TFDS dataset, built offline.

    Registered as ``"scalevit_digits"`` on import of ``keras_scalevit.data``;
    ``keras_scalevit.data.make_dataset("scalevit_digits", ...)`` prepares it on
    first use (no network). Features: ``image`` uint8 (8, 8, 3) PNG-encoded
    (decode it with the ``decode`` pp op, as ImageNet), ``label`` in 0..9.

    Example:
    >>> import tempfile
    >>> from keras_scalevit.data import get_builder
    >>> builder = get_builder("scalevit_digits", data_dir=tempfile.mkdtemp())
    >>> type(builder).__name__, builder.info.splits["train"].num_examples
    ('ScalevitDigits', 1438)
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn digits, stratified 1438/359 split (seed 0)."}
    # Marks builders that make_dataset may prepare on the fly (no network).
    BUILDS_OFFLINE = True
    # Nothing is downloaded, so there is no checksums file to locate; this also
    # avoids TFDS's source lookup, which needs the optional importlib_resources.
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 3)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with scikit-learn.
        return {
            name: self._generate_examples(rows)
            for name, rows in digits_split_indices().items()
        }

    def _generate_examples(self, rows):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits_to_uint8(digits.images)
        for i in rows:
            yield int(i), {"image": images[i], "label": int(digits.target[i])}
