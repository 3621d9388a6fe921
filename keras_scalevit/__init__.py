"""keras-scalevit: *Scaling Vision Transformers* (Zhai et al.) as a Keras 3 library."""

import importlib
import sys

__version__ = "0.1.0"

# Every submodule is importable as an attribute (`keras_scalevit.data`); the ones
# that import TensorFlow / TFDS or the training stack load on first use.
_SUBMODULES = (
    "convert",
    "data",
    "distribution",
    "evaluation",
    "losses",
    "models",
    "optimizers",
    "scaling",
    "schedules",
    "training",
    "transfer",
    "utils",
)

# `import keras_scalevit` imports the Keras-only modules at once: they register
# the classes `keras.saving.load_model` needs for a saved model. Not when Python
# runs one of our modules as a script (`python -m keras_scalevit.train`, where
# sys.argv[0] is "-m" while the package is imported): that command parses its
# flags first (`--help` answers in about a second) and imports what it uses.
if getattr(sys, "argv", [])[:1] != ["-m"]:
    from keras_scalevit import (  # noqa: F401
        losses,
        models,
        optimizers,
        schedules,
        utils,
    )


# Top-level shortcuts to functions of the submodules.
_SHORTCUTS = {"decode_predictions": "models", "list_presets": "models"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _SHORTCUTS:
        module = importlib.import_module(f"{__name__}.{_SHORTCUTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_SHORTCUTS))
