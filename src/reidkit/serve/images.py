"""Uploaded bytes -> RGB images, refusing what is not a reasonable person crop.

The pixel limit is checked from the header, before Pillow allocates anything, so a small file
that claims to be 50,000 x 50,000 costs nothing. Pillow's own decompression-bomb guard stays on
(:data:`PIL.Image.MAX_IMAGE_PIXELS` is never raised or cleared here) as a second line.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

# Formats a camera pipeline or a browser sends; anything else (e.g. PSD, EPS) is refused.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"})


class ImageRejected(ValueError):
    """An upload that is not a usable image; the message says which one and why."""


def decode_image(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Decode ``data`` to an RGB image of at most ``max_pixels`` pixels.

    ``label`` names the upload in the error (its field and position, never a server path).
    """
    if not data:
        raise ImageRejected(f"{label} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"{label} is {width}x{height} = {width * height} pixels; the limit is "
                    f"{max_pixels} (send the person crop, not the frame)"
                )
            image.load()
            return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            f"{label} exceeds Pillow's decompression-bomb limit ({str(exc).split(',')[0]})"
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            f"{label} is not a readable image (send JPEG, PNG, WEBP, BMP, GIF or TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageRejected):
            raise
        raise ImageRejected(f"{label} is a damaged image ({exc})") from None
