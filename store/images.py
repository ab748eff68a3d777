"""Decoding, verifying and normalising images: the one gate every image passes through."""

import io
import re
from dataclasses import dataclass

from PIL import Image, ImageOps

_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")
# Pillow's own bomb guard is a warning below 2x its limit; ours is explicit and configurable.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An image that cannot be used, with a short machine-readable reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    """Size limits applied to every image: longest side in pixels, total megapixels, and the
    file's size in bytes (checked before it is read)."""

    max_side: int = 4096
    max_megapixels: float = 40.0
    max_bytes: int = 128 * 2**20


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode and verify `data`, apply EXIF orientation, convert to RGB and enforce `limits`.

    Raises `ImageError` with reason `empty`, `undecodable`, `truncated`, `zero_size` or `too_large`.
    """
    if not data:
        raise ImageError("empty", "the image file has 0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            probe.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow names the buffer it was given (`<_io.BytesIO object at 0x...>`): useless here.
        detail = _BUFFER_REPR.sub("", str(exc)).strip() or type(exc).__name__
        reason = "truncated" if "truncat" in detail.lower() else "undecodable"
        raise ImageError(reason, detail) from None
    if width <= 0 or height <= 0:
        raise ImageError("zero_size", f"{width}x{height}")
    _check_limits(width, height, limits)
    try:
        # verify() leaves the image unusable; reopen and force a full decode to catch truncation.
        image = Image.open(io.BytesIO(data))
        image.load()
    except OSError as exc:
        raise ImageError("truncated", str(exc)) from None
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    _check_limits(*image.size, limits)
    return image


def _check_limits(width: int, height: int, limits: ImageLimits) -> None:
    if max(width, height) > limits.max_side:
        raise ImageError("too_large", f"{width}x{height} exceeds {limits.max_side} px on a side")
    if width * height > limits.max_megapixels * 1_000_000:
        raise ImageError(
            "too_large", f"{width}x{height} exceeds {limits.max_megapixels:g} megapixels"
        )


def encode_png(image: Image.Image) -> bytes:
    """Encode an RGB image as PNG bytes (lossless, the store's canonical image format)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def canonical_png(data: bytes, limits: ImageLimits = ImageLimits()) -> tuple[Image.Image, bytes]:
    """Pass `data` through the gate and return the image and its canonical PNG bytes.

    An RGB PNG without an EXIF rotation keeps its own bytes (re-encoding would only cost time).
    """
    image = decode_image(data, limits)
    with Image.open(io.BytesIO(data)) as probe:
        unchanged = (
            probe.format == "PNG" and probe.mode == "RGB" and probe.getexif().get(0x0112, 1) == 1
        )
    return image, data if unchanged else encode_png(image)
