"""Models: the refined Vision Transformer and its layers."""

from keras_scalevit.models.preset_utils import decode_predictions
from keras_scalevit.models.vit.posemb import posemb_sincos2d, resample_posemb
from keras_scalevit.models.vit.vit_backbone import ViTBackbone
from keras_scalevit.models.vit.vit_classifier import POOL_TYPES, ViTClassifier
from keras_scalevit.models.vit.vit_image_classifier_preprocessor import (
    ViTImageClassifierPreprocessor,
)
from keras_scalevit.models.vit.vit_layers import (
    POSEMB_TYPES,
    ClassToken,
    EncoderBlock,
    LayerNorm,
    MAPHead,
    MlpBlock,
    MultiHeadDotProductAttention,
    PatchEmbedding,
    PositionEmbedding,
)
from keras_scalevit.models.vit.vit_presets import list_presets
from keras_scalevit.models.vit.vit_variants import (
    PAPER_MODELS,
    VARIANTS,
    count_params,
    decode_variant,
)
