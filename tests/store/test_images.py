"""The image gate: decode, verify, orient, convert, and refuse what cannot be used."""

import io
import struct
import zlib

import pytest
from PIL import Image

from store.images import ImageError, ImageLimits, canonical_png, decode_image, encode_png


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_rgba_and_grayscale_become_rgb() -> None:
    rgba = Image.new("RGBA", (8, 6), (10, 20, 30, 128))
    gray = Image.new("L", (8, 6), 77)
    assert decode_image(png_bytes(rgba)).mode == "RGB"
    assert decode_image(png_bytes(gray)).getpixel((0, 0)) == (77, 77, 77)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (20, 40)


def test_png_round_trip_is_lossless() -> None:
    image = Image.effect_noise((16, 16), 50).convert("RGB")
    assert decode_image(encode_png(image)).tobytes() == image.tobytes()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"not an image at all", "undecodable"),
        (png_bytes(Image.new("RGB", (64, 64), "blue"))[:-40], "truncated"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.reason == reason


def test_truncated_jpeg_is_refused() -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 80).convert("RGB").save(buffer, format="JPEG")
    with pytest.raises(ImageError) as info:
        decode_image(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert info.value.reason in {"truncated", "undecodable"}


def test_zero_width_png_is_refused() -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.reason in {"zero_size", "undecodable"}


def test_size_limits_are_enforced() -> None:
    wide = png_bytes(Image.new("RGB", (300, 10)))
    assert decode_image(wide, ImageLimits(max_side=300)).size == (300, 10)
    with pytest.raises(ImageError, match="exceeds 299 px") as info:
        decode_image(wide, ImageLimits(max_side=299))
    assert info.value.reason == "too_large"
    with pytest.raises(ImageError, match="megapixels"):
        decode_image(png_bytes(Image.new("RGB", (200, 200))), ImageLimits(max_megapixels=0.039))


def test_canonical_png_keeps_rgb_png_bytes_and_reencodes_the_rest() -> None:
    rgb = png_bytes(Image.new("RGB", (8, 8), "red"))
    assert canonical_png(rgb)[1] == rgb
    rgba = png_bytes(Image.new("RGBA", (8, 8), "red"))
    image, data = canonical_png(rgba)
    assert data != rgba and Image.open(io.BytesIO(data)).mode == "RGB"
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(jpeg, format="JPEG")
    assert Image.open(io.BytesIO(canonical_png(jpeg.getvalue())[1])).format == "PNG"
