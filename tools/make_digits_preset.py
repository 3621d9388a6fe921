"""Writes the shipped `vit_digits` preset from a digits training run.

    KERAS_BACKEND=jax python -m keras_scalevit.train \
        --config=keras_scalevit/configs/digits.py --workdir=/tmp/digits_preset
    KERAS_BACKEND=jax python tools/make_digits_preset.py /tmp/digits_preset

The test accuracy recorded in the preset is measured here, through the preset's
own preprocessor on the raw uint8 test digits.
"""

import json
import os
import shutil
import sys

import keras
import numpy as np

from keras_scalevit.configs import digits
from keras_scalevit.models import ViTClassifier
from keras_scalevit.models.preset_utils import PACKAGE_PRESETS_DIR, save_trained_preset


def raw_test_digits():
    from sklearn.datasets import load_digits

    from keras_scalevit.data.digits import digits_split_indices, digits_to_uint8

    d = load_digits()
    idx = digits_split_indices()["test"]
    return digits_to_uint8(d.images[idx]), d.target[idx]


def main(workdir):
    model = keras.saving.load_model(
        os.path.join(workdir, "model.keras"), compile=False, safe_mode=True
    )
    out = os.path.join(PACKAGE_PRESETS_DIR, "vit_digits")
    shutil.rmtree(out, ignore_errors=True)
    save_trained_preset(model, digits.get_config(), out)
    images, labels = raw_test_digits()
    loaded = ViTClassifier.from_preset(out)
    acc = float(np.mean(loaded.predict(images, verbose=0).argmax(-1) == labels))
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    meta.update(
        test_accuracy=acc,
        test_examples=int(len(labels)),
        trained_with="python -m keras_scalevit.train "
        "--config=keras_scalevit/configs/digits.py (KERAS_BACKEND=jax)",
    )
    meta.pop("date_saved", None)
    with open(os.path.join(out, "metadata.json"), "w") as f:
        json.dump(meta, f, indent=4)
    print(out, acc)


if __name__ == "__main__":
    main(sys.argv[1])
