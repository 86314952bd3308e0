"""Models: classifier factory (and, later, attention variants and the U-Net with a transferred encoder)."""

from .classifier import CLASSIFIERS, build_classifier

__all__ = ["CLASSIFIERS", "build_classifier"]
