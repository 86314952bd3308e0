"""Reading image and mask files into numpy arrays, with errors that name the file.

Conventions:

* :func:`read_image` returns ``(array, max_value)`` where ``array`` is ``(H, W, C)`` in the file's own
  integer type (uint8 for 8-bit files, uint16 for 16-bit PNG/TIFF, float32 for DICOM after its
  rescale slope/intercept) and ``max_value`` is the value that maps to 1.0 (255, 65535, or
  ``2**BitsStored - 1`` for DICOM). MONOCHROME1 DICOM is inverted so that bright means dense, as
  in every other format.
* ``channels=1`` converts colour to luminance (ITU-R 601, as Pillow's ``"L"`` mode does);
  ``channels=3`` repeats a grey image three times; ``None`` keeps what the file has.
* :func:`read_mask` returns the file's integer label map ``(H, W)`` unchanged (binarise with ``> 0``,
  or use it as an instance map).

Any problem (missing, unreadable, truncated, unsupported) raises :class:`~sibnet.errors.DataError`
whose message starts with the file's path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import DataError

ImageFile.LOAD_TRUNCATED_IMAGES = False

DICOM_SUFFIXES = {".dcm", ".dicom"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _missing(path: Path) -> DataError:
    return DataError(f"{path}: image file not found")


def _read_pil(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise _missing(path) from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: unreadable image (not a format Pillow can decode)") from None
    except Image.DecompressionBombError as exc:  # a huge size in the header: often a corrupt file
        raise DataError(f"{path}: unreadable image ({_first_line(exc)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        kind = "truncated image" if "truncated" in str(exc).lower() else "unreadable image"
        raise DataError(f"{path}: {kind} ({_first_line(exc)})") from None
    return img


def _pil_to_array(img: Image.Image, path: Path) -> tuple[np.ndarray, float]:
    mode = img.mode
    if mode in ("1", "L", "P", "LA", "PA", "RGBA", "CMYK", "YCbCr", "RGB"):
        if mode in ("P", "PA", "RGBA", "CMYK", "YCbCr"):
            img = img.convert("RGB")
        elif mode == "LA":
            img = img.convert("L")
        elif mode == "1":
            img = img.convert("L")
        arr = np.asarray(img)
        return (arr[..., None] if arr.ndim == 2 else arr), 255.0
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img).astype(np.uint16)
        return arr[..., None], 65535.0
    if mode == "I":
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"{path}: 32-bit integer image with values outside 0..65535 is not supported")
        return arr.astype(np.uint16)[..., None], 65535.0
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 1.0
        return arr[..., None], (hi if hi > 0 else 1.0)
    raise DataError(f"{path}: unsupported image mode {mode!r}")


def _read_dicom(path: Path) -> tuple[np.ndarray, float]:
    try:
        import pydicom
    except ImportError:
        raise DataError(
            f"{path}: reading DICOM needs pydicom, which is not installed: pip install sibnet[dicom]"
        ) from None
    if not path.is_file():
        raise _missing(path)
    try:
        ds = pydicom.dcmread(str(path))
        arr = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:  # pydicom raises many types for broken files
        raise DataError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    bits = int(getattr(ds, "BitsStored", 16))
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:  # signed: shift to 0..2**bits-1
        arr = arr + 2.0 ** (bits - 1)
    hi = 2.0**bits - 1
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = hi - arr
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.ndim != 3:
        raise DataError(f"{path}: DICOM with {arr.ndim} pixel dimensions (multi-frame) is not supported")
    return arr, hi


def read_image(path: str | Path, channels: int | None = None) -> tuple[np.ndarray, float]:
    """Decode ``path`` to ``(H, W, C)`` and the value that means full intensity (see module doc)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        arr, hi = _read_dicom(path)
    else:
        arr, hi = _pil_to_array(_read_pil(path), path)
    return convert_channels(arr, channels, path), hi


def convert_channels(arr: np.ndarray, channels: int | None, path: str | Path = "image") -> np.ndarray:
    """``(H, W, C)`` with C in (1, 3) converted to ``channels`` (1: luminance, 3: repeated grey)."""
    c = arr.shape[-1]
    if channels is None or channels == c:
        return arr
    if channels == 1 and c == 3:
        grey = arr.astype(np.float32) @ _LUMA
        if np.issubdtype(arr.dtype, np.integer):
            grey = np.rint(grey).astype(arr.dtype)
        return grey[..., None]
    if channels == 3 and c == 1:
        return np.repeat(arr, 3, axis=-1)
    raise DataError(f"{path}: cannot convert a {c}-channel image to {channels} channels")


def read_mask(path: str | Path) -> np.ndarray:
    """The integer label map ``(H, W)`` stored in ``path`` (any single-channel or RGB image)."""
    path = Path(path)
    img = _read_pil(path)
    if img.mode in ("RGB", "RGBA", "P"):
        arr = np.asarray(img.convert("RGB"))
        # a colour mask is read as 'any channel set'; identical channels keep their value
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return arr[..., 0].astype(np.int64)
        return (arr.max(axis=-1) > 0).astype(np.int64)
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise DataError(f"{path}: mask must have one channel, found shape {arr.shape}")
    return arr.astype(np.int64)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file header without decoding the pixels."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        arr, _ = _read_dicom(path)
        return arr.shape[0], arr.shape[1]
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise _missing(path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({_first_line(exc)})") from None
    return h, w


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__
