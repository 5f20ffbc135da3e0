"""Image files as the models see them: any image Pillow reads, as uint8 (32, 32, 3) RGB.

Shared by `python -m src.classify` and app.py. Pillow's decompression-bomb limit is enforced,
and every problem is an ImageError whose message says what is wrong (the caller names the file).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = 32  # CIFAR's images are 32x32: every input is brought to that
# Bicubic: when shrinking, Pillow widens the filter by the scale factor, so every source pixel
# contributes (antialiased, no moire from a large photo), and it keeps edges sharper than
# bilinear or box averaging, which matters at 32x32.
RESAMPLE = Image.Resampling.BICUBIC
# A large JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, itself an averaging
# reduction) while it stays at least this many pixels on each side: 4x the 32 that RESAMPLE then
# brings it to. A 4000x3000 photo decodes as 500x375: most of the decoding skipped, in 1/64 of the
# memory (docs/measurements.md).
DRAFT = 4 * SIZE


class ImageError(Exception):
    """An input that cannot be classified; the message says why (the caller names the file)."""


def load_image(path: str | Path,
               decoding: Callable[[Image.Image], AbstractContextManager] | None = None) -> np.ndarray:
    """Any image file Pillow reads -> uint8 (32, 32, 3) RGB as the model sees it.

    EXIF orientation is applied, then the image becomes RGB (see to_rgb) and its central
    square is resized to 32x32; a 32x32 image is used as it is. Raises ImageError.
    `decoding(image)`, when given, is entered around the decoding of the opened image (its header
    read and its size checked): a server uses it to limit how many large images decode at once.
    """
    try:
        if Path(path).stat().st_size == 0:  # Pillow would call it "not an image"
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; _check_size refuses those too.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(image)
                image.draft(None, (DRAFT, DRAFT))  # JPEG only; other formats ignore it
                with decoding(image) if decoding else nullcontext():
                    rgb = to_rgb(_upright(image))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a folder") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"refused as a possible decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (Pillow recognises no image format in it)") from None
    except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError...
        raise ImageError(f"truncated or corrupt image ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200] if str(error) else 'no detail'})") from None
    return to_model_input(rgb)


def _check_size(image: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise ImageError(f"refused as a possible decompression bomb: {image.width}x{image.height} = "
                         f"{image.width * image.height:,} pixels is over Pillow's limit of {limit:,} "
                         "(PIL.Image.MAX_IMAGE_PIXELS)")


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (decoded: a copy even without one)."""
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, KeyError, TypeError):  # a broken EXIF block: keep the pixels
        image.load()
        return image.copy()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any mode: transparency over white, 16-bit grayscale scaled to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow would clip 0..65535 to 0..255 (a white image): scale the range instead.
        levels = np.asarray(image, dtype=np.float64) * (255 / 65535)
        image = Image.fromarray(np.clip(levels.round(), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # As a browser shows it on a white page; plain convert("RGB") would expose the colour
        # stored under transparent pixels (often black).
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def to_model_input(image: Image.Image) -> np.ndarray:
    """RGB image -> uint8 (32, 32, 3): the central square (largest that fits) resized with RESAMPLE."""
    if image.size != (SIZE, SIZE):
        # CIFAR's images are square: cropping keeps shapes unsquashed; fit() resizes through a
        # crop box in one resampling pass.
        image = ImageOps.fit(image, (SIZE, SIZE), method=RESAMPLE)
    return np.asarray(image, dtype=np.uint8).copy()


IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
