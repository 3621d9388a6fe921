"""Checkpoint conversion from and to google-research/big_vision."""

from keras_scalevit.convert.big_vision import (
    from_big_vision,
    infer_config,
    load_big_vision_weights,
    load_npz,
    normalize_checkpoint,
    to_big_vision,
)
