"""Shared utilities: argument validation, `keep_host_memory`."""

from keras_scalevit.utils.host_memory import keep_host_memory
from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_kwargs,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
    check_probability,
    check_shape,
)
