"""Monitor a deployed classifier: per-image scores of unfamiliar inputs, and batch alarms.

The saliency scores (class distinctiveness ``cd`` and spatial coherence ``sc`` of the model's class
maps, and their standardised sum ``cd+sc``) are compared with the standard detectors (maximum class
probability ``msp``, ``energy``, ``mahalanobis`` distance of the penultimate features) on the same
footing: a reference profile from in-distribution images (:func:`fit`), conformal p-values of new
images (:func:`score`) and a two-sample test of a batch (:func:`check`). See
:mod:`sibnet.monitor.scores` for each score's definition and orientation (higher = more suspicious)
and :mod:`sibnet.monitor.core` for the fit/calibration split.
"""

from .conformal import batch_test, p_values
from .core import DEFAULT_METHOD, DEFAULT_SCORE, Monitor, check, fit, score
from .profile import Profile, model_fingerprint
from .scores import SCORES

__all__ = ["DEFAULT_METHOD", "DEFAULT_SCORE", "Monitor", "Profile", "SCORES", "batch_test", "check", "fit",
           "model_fingerprint", "p_values", "score"]
