"""``sibnet explain --checkpoint CKPT IMAGE...``: per-class saliency overlays of a trained classifier.

Each image (PNG, JPEG, TIFF or DICOM, read by :func:`sibnet.data.imageio.read_image`) is converted
to the checkpoint's channels, resized to its image size (bilinear, antialiased) and normalised as
in training. One figure per image is written to ``OUT/<stem>_<method>.png`` (``<method>-contrast-clrp``
with ``--contrast clrp``, likewise for each saliency option): the image, then one
overlay per class with the predicted probability in the panel title (maps of one image share a
colour scale, see :mod:`sibnet.report.figures`). All images are read before any work, so a
missing or unreadable file stops the command with a one-line error naming it (exit code 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
        "  sibnet explain --checkpoint runs/sibnet/best.pt --contrast clrp xray1.png")
    add_checkpoint(p)
    p.add_argument("--method", default="deep_taylor",
                   help="saliency method (default deep_taylor; gradcam, lrp_epsilon, lrp_alpha_beta, "
                        "input_x_gradient)")
    add_saliency_options(p)
    p.add_argument("--out", default="explanations", help="output folder (default ./explanations)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
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


def explain_images(model, meta: dict, paths, method: str, out: str | Path, device="cpu",
                   options: dict | None = None) -> list[Path]:
    """Write one overlay figure per image (``options``: the saliency method's, e.g. ``contrast``); returns
    the files written."""
    from ..evaluation.run import probabilities
    from ..report.figures import explain_figure, save_figure
    from ..saliency import describe, get

    fn = get(method)
    inputs = [load_input(p, meta) for p in paths]  # every file read (and checked) before any work
    out = Path(out)
    written, used = [], set()
    model.eval()
    for path, (shown, x) in zip(paths, inputs):
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
                             method=describe(method, options))
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
    model, meta = load_model_from_checkpoint(args.checkpoint, map_location=args.device)
    written = explain_images(model, meta, args.images, args.method, args.out, args.device, options)
    for w in written:
        print(w)
    return 0
