"""The common interface of every dataset in :mod:`sibnet.data`.

A dataset is a ``torch.utils.data.Dataset`` whose items are dicts:

``image``   float32 tensor (C, H, W), intensities scaled to [0, 1] before normalisation
``label``   float32 tensor (K,): multi-hot for multi-label tasks (1 present, 0 absent,
            -1 uncertain where a policy keeps it, ``nan`` where the label is masked out);
            for single-label tasks a one-hot vector (the class index is ``label.argmax()``)
``mask``    optional float32 tensor (K, H, W): the expert mask of each class (all zeros
            where the class is absent or has no annotation); absent key when the dataset has
            no masks at all
``id``      str, the image's identifier (file name or row)
``patient`` str, the patient identifier used for patient-wise splits

and which carries a :class:`DatasetInfo` as ``.info``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Task = Literal["multilabel", "multiclass"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    task: Task = "multilabel"
    in_channels: int = 1
    has_masks: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
