"""The export's streaming parts: images fetched in order by threads, PNG bytes, missing objects."""

import io
from pathlib import Path

from PIL import Image

from loop.export.pipeline import PNG_SIGNATURE, RowImages, as_png, fetched
from loop.export.selection import ExportRow
from store.objects import LocalStore


def test_images_come_back_in_row_order_whatever_the_threads(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for index in range(50):
        store.put(f"s/{index}.png", PNG_SIGNATURE + bytes([index]))
    rows = [
        ExportRow(f"r{i}", i, {}, {"source_image": f"s/{i}.png", "edited_image": f"s/{49 - i}.png"})
        for i in range(50)
    ]
    rows.append(ExportRow("gone", 50, {}, {"source_image": "s/0.png", "edited_image": "s/x.png"}))
    for workers in (1, 3):
        out = list(fetched(store, rows, workers, chunk=4))
        assert [row.id for row, _ in out] == [row.id for row in rows]
        for index, (_, images) in enumerate(out[:50]):
            assert isinstance(images, RowImages)
            assert images.data["edited_image"] == PNG_SIGNATURE + bytes([49 - index])
            assert len(images.sha256["source_image"]) == 64
        assert out[50][1] == "edited_image s/x.png is missing from the store"


def test_an_image_stored_in_another_format_is_exported_as_png() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buffer, format="JPEG")
    png = as_png(buffer.getvalue())
    assert png.startswith(PNG_SIGNATURE)
    assert Image.open(io.BytesIO(png)).size == (4, 3)
    assert as_png(png) is png
