"""SIBNet's loss terms: class distinctiveness (eq. 1), spatial coherence (eq. 2), the total (eq. 3)."""

from .classification import class_weights_from_labels, weighted_bce, weighted_ce
from .clusters import clusters, otsu_threshold
from .coherence import spatial_coherence
from .distinctiveness import class_distinctiveness
from .normalise import normalise_maps
from .sibnet_loss import DEFAULT_LAMBDAS, SIBNetLoss

__all__ = ["DEFAULT_LAMBDAS", "SIBNetLoss", "class_distinctiveness", "class_weights_from_labels", "clusters",
           "normalise_maps", "otsu_threshold", "spatial_coherence", "weighted_bce", "weighted_ce"]
