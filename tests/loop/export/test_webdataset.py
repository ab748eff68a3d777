"""WebDataset exports, read back by `webdataset` and `tarfile`, not by editloop."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import webdataset as wds
from PIL import Image

from loop.export.columns import ExportFormat, ExportKind, value_columns
from tests.loop.export.conftest import ExportEnv, folder_digest, judged_attempts, manifest_verifies


def test_webdataset_iterates_every_shard_and_decodes_every_image(
    env: ExportEnv, tmp_path: Path
) -> None:
    out = tmp_path / "wds"
    shard_mb = 0.01
    result = env.export(out, ExportKind.REFLECTIONS, ExportFormat.WEBDATASET, shard_mb=shard_mb,
                        val_fraction=0.3)  # fmt: skip
    manifest = manifest_verifies(out)
    shards = sorted(str(p) for p in out.glob("*.tar"))
    assert len(shards) >= 3
    for shard in shards:  # at most shard_mb each
        assert Path(shard).stat().st_size <= shard_mb * 2**20
    samples = list(wds.WebDataset(shards, shardshuffle=False, empty_check=True).decode("pil"))
    assert len(samples) == result.rows == manifest["rows"] == 36
    expected_keys = {f"{c.name}" for c in value_columns(ExportKind.REFLECTIONS)}
    attempts = {a["attempt_id"]: a for a in judged_attempts(env.factory)}
    for sample in samples:
        record = sample["json"]
        assert set(record) == expected_keys and sample["__key__"] == record["id"]
        assert isinstance(sample["source.png"], Image.Image)
        assert isinstance(sample["edited.png"], Image.Image)
        attempt = attempts[record["attempt_id"]]
        assert record["tag"] == attempt["tag"] and record["verdict"] == attempt["verdict"]
        edited = env.store.get(attempt["output_key"])
        assert record["edited_sha256"] == hashlib.sha256(edited).hexdigest()
    # Rows of one task never in two splits; shards named by split.
    splits: dict[int, set[str]] = {}
    for shard in shards:
        split = Path(shard).name.split("-")[0]
        for sample in wds.WebDataset(shard, shardshuffle=False).decode():
            splits.setdefault(sample["json"]["task_id"], set()).add(split)
    assert all(len(s) == 1 for s in splits.values())
    assert set().union(*splits.values()) == {"train", "validation"}


def test_tar_entries_are_fixed_so_reexports_are_byte_identical(
    env: ExportEnv, tmp_path: Path
) -> None:
    env.export(tmp_path / "a", export_format=ExportFormat.WEBDATASET, hindsight=True)
    env.export(tmp_path / "b", export_format=ExportFormat.WEBDATASET, hindsight=True)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as archive:
        members = archive.getmembers()
        names = [m.name for m in members]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
            (0, 0, 0, "", "", 0o644)
        }
        record = json.loads(archive.extractfile(names[2]).read())  # type: ignore[union-attr]
        png = archive.extractfile(names[0]).read()  # type: ignore[union-attr]
    key = record["id"]
    assert names[:3] == [f"{key}.source.png", f"{key}.edited.png", f"{key}.json"]
    assert Image.open(io.BytesIO(png)).format == "PNG"
