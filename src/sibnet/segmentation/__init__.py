"""Gland segmentation with a classifier's encoder: data at original size (:mod:`.data`), training
and checkpoints (:mod:`.train`), prediction and GlaS scores (:mod:`.predict`), contour figures
(:mod:`.figure`). The network is :class:`sibnet.models.unet.EncoderUNet`; the command line is
``sibnet segment``."""
