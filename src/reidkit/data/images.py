"""The one image decoder: file or uploaded bytes in, upright 8-bit RGB out, or a one-line refusal.

Training, evaluation, inference, the gallery (crops added and searched) and the service all
decode through :func:`decode_rgb`, so the same bytes give the same pixels everywhere, or the
same refusal: an image that was embedded one way by ``gallery add`` and another by the service
never matches itself.

What every image gets:

* only formats a camera pipeline or a browser produces are opened (:data:`FORMATS`); anything
  else (PSD, EPS, ...) is not a readable image, whatever its suffix says;
* the pixel count is checked from the header before anything is decoded (default
  :data:`MAX_IMAGE_PIXELS`; the service passes its own ``serve.max_image_pixels``), so a small
  file that claims to be 50,000 x 50,000 costs nothing; Pillow's own decompression-bomb error
  stays on as a second line and gives the same refusal;
* the whole image is decoded, so a truncated or damaged file is refused, never half-read;
* the EXIF orientation is applied (a phone-rotated crop comes out upright, as a browser or a
  photo viewer shows it); a damaged EXIF block is ignored, not the image;
* transparency (RGBA, LA, PA, a palette or greyscale with a transparent colour) is composited
  on black: transparent pixels are black whatever colour they hide, which is what dropping the
  alpha channel gives for the usual fully transparent black pixel;
* 16-bit greyscale is reduced to 8 bits by its high byte (``v >> 8``), as Pillow reduces 16-bit
  colour, so one picture gives the same pixels whichever 16-bit form it was saved in (Pillow's
  own conversion clipped it at 255: an all-white image); 32-bit integer images holding values
  in 0-65535 are read the same way; palette, 1-bit, greyscale, CMYK and YCbCr images are
  converted by Pillow;
* floating-point images and 32-bit integers outside 0-65535 are refused: their scale cannot be
  known without guessing.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from reidkit.errors import ImageRefused, first_line

#: Formats a camera pipeline or a browser sends; Pillow opens nothing else here.
FORMATS = ("BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP")
#: The default pixel limit: about four 4K frames, far above any person crop, far below what
#: exhausts memory when several loader workers decode at once.
MAX_IMAGE_PIXELS = 36_000_000

# Pillow warns (it does not refuse) between its two bomb thresholds; the size is checked here
# against a limit of our own, so its warning would only add a second, alarming line.
# Damaged metadata (a corrupt EXIF block) makes Pillow warn too: the image is refused with its
# reason or decodes fine, and either way one line is what a user should see.
for _noise in (Image.DecompressionBombWarning, UserWarning):
    warnings.filterwarnings("ignore", category=_noise, module=r"PIL\.")

_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_UINT16_MAX = 65535
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_BYTES_LEFT = re.compile(r" \(\d+ bytes not processed\)")
# What a damaged EXIF block can raise while it is parsed; the image itself is still good.
_EXIF_ERRORS = (SyntaxError, ValueError, TypeError, KeyError, struct.error)


def decode_rgb(
    source: bytes | Path,
    label: str,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    draft: bool = False,
) -> Image.Image:
    """``source`` (a file or its bytes) as an upright 8-bit RGB image; see the module docstring.

    ``label`` names the image in the refusal (``"image '/data/x.jpg'"``, ``"image 2"``).
    ``draft`` decodes a JPEG at 1/8 scale, for checks that only need to know a file decodes:
    libjpeg still reads every compressed byte, so truncation and corruption still show, in
    about half the time (the result is not upright and not full size).
    """
    try:
        return _decode(source, max_pixels, draft)
    except _Refusal as refusal:
        raise _refused(label, str(refusal)) from None
    except Image.DecompressionBombError as exc:
        found = _BOMB_PIXELS.search(str(exc))
        pixels = found.group(1) if found else f"over {2 * Image.MAX_IMAGE_PIXELS}"
        raise _refused(label, _too_large(f"{pixels} pixels", max_pixels)) from None
    except UnidentifiedImageError:
        raise _refused(
            label, f"is not a readable image (use {', '.join(FORMATS[:-1])} or {FORMATS[-1]})"
        ) from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's complaint, not the decoder's
            raise _refused(label, f"cannot be read ({exc.strerror})") from None
        raise _refused(label, _damaged(exc)) from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise _refused(label, _damaged(exc)) from None


def _refused(label: str, reason: str) -> ImageRefused:
    refused = ImageRefused(f"{label} {reason}")
    refused.reason = reason
    return refused


class _Refusal(Exception):
    """A reason found while decoding; :func:`decode_rgb` adds the label."""


def _decode(source: bytes | Path, max_pixels: int, draft: bool) -> Image.Image:
    if (len(source) if isinstance(source, bytes) else Path(source).stat().st_size) == 0:
        raise _Refusal("is empty")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(stream, formats=FORMATS) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise _Refusal(_too_large(f"{width}x{height} = {width * height} pixels", max_pixels))
        if draft:
            # At least 1x1: Pillow divides by the size asked for, and a crop under 8 pixels
            # wide or high (a far-away person) made every action's up-front check crash.
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        image.load()
        if not draft:
            _make_upright(image)
        return _to_rgb(image)


def _damaged(error: BaseException) -> str:
    # Without the decoder's byte count, which depends on how far it read (a draft decode reads
    # differently), so the reason is the same at every entry point.
    return f"is damaged or truncated ({_BYTES_LEFT.sub('', first_line(error))})"


def _too_large(size: str, limit: int) -> str:
    return f"is {size}; the limit is {limit} (a person crop is far smaller: crop or downscale it)"


def _make_upright(image: Image.Image) -> None:
    with contextlib.suppress(*_EXIF_ERRORS):  # an unreadable orientation is no orientation
        ImageOps.exif_transpose(image, in_place=True)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_INTEGER_MODES:
        return _high_byte(np.asarray(image), image.mode).convert("RGB")
    if image.mode == "F":
        raise _Refusal("has floating-point pixels (mode F); save it as an 8-bit or 16-bit image")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def _high_byte(pixels: np.ndarray, mode: str) -> Image.Image:
    wide = pixels.astype(np.int64)
    if wide.size and (wide.min() < 0 or wide.max() > _UINT16_MAX):
        raise _Refusal(f"has {mode} pixels outside 0-65535; save it as an 8-bit or 16-bit image")
    return Image.fromarray((wide >> 8).astype(np.uint8))
