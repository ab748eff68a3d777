"""JSONL exports: one JSON line per row, PNG files beside it, read with `json` and PIL."""

import hashlib
import json
from pathlib import Path

from PIL import Image

from loop.export.columns import EDIT_COLUMNS, ExportFormat
from tests.loop.export.conftest import ExportEnv, folder_digest, manifest_verifies


def test_jsonl_lines_point_at_images_beside_them(env: ExportEnv, tmp_path: Path) -> None:
    out = tmp_path / "jsonl"
    result = env.export(out, export_format=ExportFormat.JSONL, hindsight=True, val_fraction=0.3)
    manifest = manifest_verifies(out)
    rows = []
    for split in ("train", "validation"):
        lines = (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == manifest["splits"][split]
        rows += [json.loads(line) for line in lines]
    assert len(rows) == result.rows == 18
    for row in rows:
        assert list(row) == [c.name for c in EDIT_COLUMNS]
        for column in ("source", "edited"):
            path = out / row[f"{column}_image"]
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == row[f"{column}_sha256"]
            assert path.name == f"{row[f'{column}_sha256']}.png"
            Image.open(path).verify()
    # A source image shared by several rows is written once.
    images = [f for f in manifest["files"] if f["path"].startswith("images/")]
    assert len(images) == len({r[f"{c}_sha256"] for r in rows for c in ("source", "edited")})
    env.export(tmp_path / "again", export_format=ExportFormat.JSONL, hindsight=True,
               val_fraction=0.3)  # fmt: skip
    assert folder_digest(out) == folder_digest(tmp_path / "again")
