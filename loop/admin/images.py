"""Images for the pages: which keys may be served, their ETag, and thumbnails resized on the fly
and kept in a bounded in-memory cache (least recently used dropped first)."""

import io
import re
import threading
from collections import OrderedDict

from PIL import Image

# Content-addressed keys end in their SHA-256 (store/objects.py: content_key).
_SHA_IN_KEY = re.compile(r"([0-9a-f]{64})\.[A-Za-z0-9]+$")
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}
THUMBNAIL_SIDES = (64, 128, 256, 512)  # the sizes a page may ask for


def safe_key(key: str) -> bool:
    """Whether `key` is a plain relative key: no `..`, no absolute path, no backslash, no empty
    segment (such a key never reaches the store)."""
    return bool(key) and not (
        key.startswith("/")
        or "\\" in key
        or any(part in ("", ".", "..") for part in key.split("/"))
        or any(ord(char) < 32 for char in key)
    )


def content_type(key: str) -> str:
    """The MIME type of an image key, from its extension."""
    return CONTENT_TYPES.get(key.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def key_digest(key: str) -> str | None:
    """The SHA-256 a content-addressed key ends in (the object's ETag), else None."""
    found = _SHA_IN_KEY.search(key)
    return found.group(1) if found else None


def make_thumbnail(data: bytes, side: int) -> bytes:
    """`data` scaled to fit `side`×`side` (PNG); an image already that small is returned as is."""
    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) <= side:
            return data
        image = image.convert("RGB")
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=False)
        return out.getvalue()


class ThumbnailCache:
    """Thumbnails by (key, side), at most `max_bytes` in all; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, side: int) -> bytes | None:
        with self._lock:
            data = self._items.get((key, side))
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end((key, side))
            self.hits += 1
            return data

    def put(self, key: str, side: int, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop((key, side), None)
            if old is not None:
                self._bytes -= len(old)
            self._items[(key, side)] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
