"""Models: classifier factory (and, later, attention variants and the U-Net with a transferred encoder)."""

from .attention import ATTENTION_KINDS, densenet121_attention
from .classifier import CLASSIFIERS, build_classifier

__all__ = ["ATTENTION_KINDS", "CLASSIFIERS", "build_classifier", "densenet121_attention"]
