"""Evaluators: big_vision's few-shot linear evaluation (spec §6)."""

from keras_scalevit.evaluation.callbacks import (
    DEFAULT_PP,
    FewShotEvaluator,
    tfds_split_loader,
)
from keras_scalevit.evaluation.fewshot import (
    BIAS_CONSTANT,
    DEFAULT_L2_GRID,
    DEFAULT_L2_REG,
    DEFAULT_NUM_SEEDS,
    DEFAULT_SHOTS,
    STD_EPSILON,
    fewshot_accuracy,
    fewshot_evaluate,
    fewshot_predictions,
    sample_shots,
    select_l2_reg,
)

__all__ = [
    "BIAS_CONSTANT",
    "DEFAULT_L2_GRID",
    "DEFAULT_L2_REG",
    "DEFAULT_NUM_SEEDS",
    "DEFAULT_PP",
    "DEFAULT_SHOTS",
    "STD_EPSILON",
    "FewShotEvaluator",
    "fewshot_accuracy",
    "fewshot_evaluate",
    "fewshot_predictions",
    "sample_shots",
    "select_l2_reg",
    "tfds_split_loader",
]
