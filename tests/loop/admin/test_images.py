"""Which keys may be served, their ETag, thumbnails and their bounded cache (no database)."""

import io

import pytest
from PIL import Image

from loop.admin.images import ThumbnailCache, content_type, key_digest, make_thumbnail, safe_key

SHA = "ab" * 32


@pytest.mark.parametrize(
    "key",
    [
        "../x.png",
        "/etc/passwd",
        "sources/../x.png",
        "a//b.png",
        "a\\b.png",
        "./a.png",
        "",
        "a\n.png",
    ],
)
def test_unsafe_keys_are_refused(key: str) -> None:
    assert not safe_key(key)


def test_content_addressed_keys_carry_their_etag() -> None:
    assert safe_key(f"sources/ab/{SHA}.png")
    assert key_digest(f"sources/ab/{SHA}.png") == SHA
    assert key_digest("exports/readme.txt") is None
    assert content_type(f"edits/ab/{SHA}.png") == "image/png"
    assert content_type("x.JPG") == "image/jpeg"


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_thumbnails_keep_the_aspect_and_never_upscale() -> None:
    assert Image.open(io.BytesIO(make_thumbnail(png(600, 300), 128))).size == (128, 64)
    small = png(16, 16)
    assert make_thumbnail(small, 128) == small


def test_the_cache_drops_the_least_recently_used_past_its_bound() -> None:
    cache = ThumbnailCache(max_bytes=100)
    cache.put("a", 64, b"x" * 40)
    cache.put("b", 64, b"y" * 40)
    assert cache.get("a", 64) == b"x" * 40  # a is now the most recent
    cache.put("c", 64, b"z" * 40)  # 120 bytes: b, the least recently used, goes
    assert cache.get("b", 64) is None and cache.get("a", 64) and cache.get("c", 64)
    assert cache.size_bytes == 80 and len(cache) == 2
    cache.put("huge", 64, b"h" * 101)  # larger than the whole cache: not kept
    assert cache.get("huge", 64) is None and cache.size_bytes == 80
