"""``sibnet explain --checkpoint CKPT IMAGE...``: per-class saliency overlays of a trained classifier.

Each image (PNG, JPEG, TIFF or DICOM, read by :func:`sibnet.data.imageio.read_image`) is converted
to the checkpoint's channels, resized to its image size (bilinear, antialiased) and normalised as
in training. One figure per image is written to ``OUT/<stem>_<method>.png`` (``<method>-contrast-clrp``
with ``--contrast clrp``, likewise for each saliency option): the image, then one
overlay per class with the predicted probability in the panel title (maps of one image share a
colour scale, see :mod:`sibnet.report.figures`). All images are read before any work, so a
missing or unreadable file stops the command with a one-line error naming it (exit code 2).

Expert masks (``--mask FILE`` per image, or ``--masks-beside``: ``<stem>_mask.png``, ``<stem>_mask_1.png``,
... next to each image, merged as in the BUSI release) are drawn as a contour on every panel, and each
class panel then also gives the share of that map's positive mass inside the mask. A mask must have
the image's size; it is resized with the image (nearest neighbour).
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import torch

from ..errors import SibnetError
from .arguments import add_checkpoint, add_saliency_options, saliency_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="per-class saliency overlays of images, with predicted probabilities",
        description="Explain a trained classifier's predictions on image files (PNG, JPEG, TIFF, DICOM): "
        "one figure per image with the image and one saliency overlay per class, each titled with the "
        "class's predicted probability. Written to OUT/<image stem>_<method>.png.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  sibnet explain --checkpoint runs/sibnet/best.pt xray1.png xray2.dcm\n"
        "  sibnet explain --checkpoint runs/sibnet/best.pt --method gradcam --out overlays scans/*.jpg\n"
        "  sibnet explain --checkpoint runs/sibnet/best.pt --contrast clrp xray1.png\n"
        "  sibnet explain --checkpoint runs/busi/best.pt --masks-beside busi/benign/benign_001.png")
    add_checkpoint(p)
    p.add_argument("--method", default="deep_taylor",
                   help="saliency method (default deep_taylor; gradcam, lrp_epsilon, lrp_alpha_beta, "
                        "input_x_gradient)")
    add_saliency_options(p)
    p.add_argument("--out", default="explanations", help="output folder (default ./explanations)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    masks = p.add_mutually_exclusive_group()
    masks.add_argument("--mask", action="append", default=None, metavar="FILE",
                       help="expert mask of an image (non-zero = inside), drawn as a contour; repeat once per "
                            "image, in the images' order")
    masks.add_argument("--masks-beside", action="store_true",
                       help="read each image's masks from beside it (<stem>_mask.png, <stem>_mask_1.png, ...: "
                            "merged); images without one are drawn without a contour")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.set_defaults(func=run)


def load_input(path: str | Path, meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shown (C, H, W) in [0, 1], model input (C, H, W))`` of an image file for a checkpoint."""
    from ..data.imageio import read_image
    from ..data.transforms import normalizer, resize_image, to_unit_float

    arr, top = read_image(path, channels=int(meta["in_channels"]))
    shown = to_unit_float(resize_image(arr, top, int(meta["image_size"])))
    norm = normalizer(meta.get("normalisation"), int(meta["in_channels"]))
    return shown, (norm(shown) if norm is not None else shown)


def masks_beside(image: str | Path) -> list[Path]:
    """The mask files next to ``image``: ``<stem>_mask.png``, then ``<stem>_mask_1.png``, ``_mask_2``, ..."""
    from ..data.busi import MASK_NAME

    image = Path(image)
    found = []
    for f in image.parent.glob(f"{glob.escape(image.stem)}_mask*.png"):
        m = MASK_NAME.match(f.name)
        if m and m.group("stem") == image.stem:
            found.append((int(m.group("k") or 0), f))
    return [f for _, f in sorted(found)]


def mask_of(path: str | Path) -> Path | None:
    """The image whose mask ``path`` is (``<stem>_mask.png`` or ``<stem>_mask_N.png`` beside it), else None."""
    from ..data.busi import MASK_NAME

    path = Path(path)
    m = MASK_NAME.match(path.name)
    if m is None:
        return None
    image = path.with_name(m.group("stem") + ".png")
    return image if image.is_file() else None


def load_mask(files, image: str | Path, meta: dict) -> np.ndarray:
    """The union of ``files`` (non-zero = inside) as a ``(H, W)`` 0/1 array at the checkpoint's image size;
    every file must have the size of ``image``."""
    from ..data.imageio import image_size, read_mask
    from ..data.transforms import resize_labels

    want = image_size(image)
    merged = None
    for f in files:
        if not Path(f).is_file():
            raise SibnetError(f"{f}: mask file not found")
        m = read_mask(f) > 0
        if m.shape != want:
            raise SibnetError(f"{f}: mask is {m.shape[0]}x{m.shape[1]} pixels, its image {image} is "
                              f"{want[0]}x{want[1]}")
        merged = m if merged is None else merged | m
    if merged is None:
        raise SibnetError(f"{image}: no mask given")
    return resize_labels(merged.astype(np.uint8), int(meta["image_size"])).astype(np.float32)


def _check_mask_count(masks: list, paths) -> None:
    if len(masks) != len(paths):
        raise SibnetError(f"--mask: {len(masks)} masks for {len(paths)} images (give one per image, in their order)")


def explain_images(model, meta: dict, paths, method: str, out: str | Path, device="cpu",
                   options: dict | None = None, masks=None) -> list[Path]:
    """Write one overlay figure per image (``options``: the saliency method's, e.g. ``contrast``; ``masks``:
    per image a list of mask files, empty for none); returns the files written."""
    from ..evaluation.run import probabilities
    from ..report.figures import explain_figure, save_figure
    from ..saliency import describe, get

    fn = get(method)
    inputs = [load_input(p, meta) for p in paths]  # every file read (and checked) before any work
    masks = list(masks) if masks is not None else [[] for _ in paths]
    _check_mask_count(masks, paths)
    mask_maps = [load_mask(m, p, meta) if m else None for m, p in zip(masks, paths)]
    out = Path(out)
    written, used = [], set()
    model.eval()
    for path, (shown, x), mask in zip(paths, inputs, mask_maps):
        xb = x[None].to(device)
        with torch.no_grad():
            logits = model(xb).float()
        probs = probabilities(logits, meta["task"])[0].cpu()
        maps = fn(model, xb, **(options or {}))[0].detach().float().cpu()
        label = describe(method, options, for_files=True)
        name = f"{Path(path).stem}_{label}.png"
        n = 1
        while name in used:  # two inputs with the same stem in different folders
            n += 1
            name = f"{Path(path).stem}-{n}_{label}.png"
        used.add(name)
        fig = explain_figure(shown.numpy(), maps.numpy(), meta["class_names"], probs.numpy(),
                             title=Path(path).name,
                             method=describe(method, options), mask=mask)
        written.append(save_figure(fig, out / name))
    return written


def run(args) -> int:
    from ..saliency import check_options, get
    from ..training.checkpoint import load_model_from_checkpoint

    get(args.method)  # an unknown method or option fails before the model is built
    options = saliency_options(args.saliency_option, args.contrast)
    check_options(args.method, options)
    for p in args.images:
        if not Path(p).is_file():
            raise SibnetError(f"{p}: image file not found")
    if args.mask is not None:
        masks = [[m] for m in args.mask]
    elif args.masks_beside:
        images = []
        for p in args.images:  # e.g. busi/benign/*.png lists the masks too
            owner = mask_of(p)
            if owner is None:
                images.append(p)
            else:
                print(f"{p}: the mask of {owner}, not explained")
        if not images:
            raise SibnetError("--masks-beside: every file given is a mask; give the images")
        args.images = images
        masks = [masks_beside(p) for p in args.images]
        for p, m in zip(args.images, masks):
            if not m:
                print(f"{p}: no mask beside it (drawn without a contour)")
    else:
        masks = None
    if masks is not None:
        _check_mask_count(masks, args.images)  # before the model is loaded
    model, meta = load_model_from_checkpoint(args.checkpoint, map_location=args.device)
    written = explain_images(model, meta, args.images, args.method, args.out, args.device, options, masks)
    for w in written:
        print(w)
    return 0
