"""Ingest: every bad-row kind reported and leaving nothing behind; re-ingest adds nothing."""

import io
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from loop.ingest import IngestReport, ingest_rows
from loop.sources import Columns, read_rows
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.images import ImageLimits
from store.keys import SOURCE_PREFIX
from store.models import Task, TaskSource
from store.objects import LocalStore, ObjectStore, content_key


def png(colour: str, size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(params=["sqlite+local", pytest.param("postgres+s3", marks=pytest.mark.services)])
def backends(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[sessionmaker[Session], ObjectStore]:
    if request.param == "sqlite+local":
        url, store = request.getfixturevalue("sqlite_db_url"), LocalStore(tmp_path / "objects")
    else:
        url, store = request.getfixturevalue("postgres_url"), request.getfixturevalue("s3_store")
    upgrade(url)
    return make_session_factory(make_engine(url)), store


def run_ingest(
    path: Path,
    backends: tuple[sessionmaker[Session], ObjectStore],
    *,
    origin: str = "t",
    limits: ImageLimits = ImageLimits(max_side=64, max_megapixels=0.004),
    **kwargs: Any,
) -> IngestReport:
    factory, store = backends
    rows, _ = read_rows(path)
    return ingest_rows(
        rows, session_factory=factory, store=store, limits=limits, origin=origin, **kwargs
    )


def write_jsonl(folder: Path, lines: list[str]) -> Path:
    path = folder / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def mixed_input(tmp_path: Path) -> Path:
    """Four good rows (one image shared by two instructions) and one row of each bad kind."""
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    (data / "img/red.png").write_bytes(png("red"))
    (data / "img/blue.png").write_bytes(png("blue"))
    (data / "img/green.png").write_bytes(png("green"))
    (data / "img/garbage.png").write_bytes(b"this is not a png")
    (data / "img/truncated.png").write_bytes(png("white", (60, 60))[:-30])
    (data / "img/empty.png").write_bytes(b"")
    (data / "img/huge.png").write_bytes(png("black", (65, 8)))
    (data / "img/late.png").write_bytes(png("purple"))
    (tmp_path / "outside.png").write_bytes(png("orange"))
    (data / "img/link.png").symlink_to(tmp_path / "outside.png")
    os.mkfifo(data / "img/fifo.png")

    def row(image: str, instruction: str = "make it yellow", kind: str = "alter") -> str:
        return json.dumps({"image": image, "instruction": instruction, "edit_type": kind})

    lines = [
        row("img/red.png", kind="adjust"),  # 1 ok (ImgEdit alias)
        row("img/red.png", "remove the object", "remove"),  # 2 ok: same image, other task
        row("img/blue.png", extra := "replace the cube with a ball", "replace"),  # 3 ok
        json.dumps(
            {
                "image": "img/green.png",
                "instruction": "add a hat",
                "edit_type": "add",
                "source_id": 7,
            }
        ),  # 4 ok, with metadata
        row("img/missing.png"),  # 5 missing_file
        row("img/garbage.png"),  # 6 image_undecodable
        row("img/truncated.png"),  # 7 image_truncated
        row("img/empty.png"),  # 8 image_empty
        row("img/huge.png"),  # 9 image_too_large (65 px > 64)
        row("img/blue.png", "   "),  # 10 empty_instruction
        row("img/blue.png", kind="teleport"),  # 11 unknown_edit_type
        '{"image": "img/blue.png", "instruction": ',  # 12 malformed_row
        "[1, 2, 3]",  # 13 malformed_row
        row("img/red.png", kind="adjust"),  # 14 duplicate of 1 in the same file
        row("../outside.png"),  # 15 path_outside (climbs out of the folder)
        row(str(tmp_path / "outside.png")),  # 16 path_outside (absolute)
        row("img/link.png"),  # 17 path_outside (a link inside that points outside)
        row("img/fifo.png"),  # 18 not_a_file (a FIFO: reading it would block)
        row("/dev/zero"),  # 19 path_outside before not_a_file: never read
        row("img/late.png", "add a hat\x00 and a scarf"),  # 20 invalid_text (NUL)
        row("img/late.png", "add a hat \ud800"),  # 21 invalid_text (lone surrogate)
        '{"image": "img/late.png", "instruction": "caf\xe9", "edit_type": "add"}',  # 22 UTF-8
        row("img/late.png", "make it purple"),  # 23 ok, after all of them
    ]
    assert extra
    path = write_jsonl(data, lines)
    # Line 22 as Latin-1 bytes: invalid UTF-8 is refused, not silently replaced.
    path.write_bytes(path.read_bytes().replace("caf\xe9".encode(), b"caf\xe9"))
    return path


EXPECTED_REJECTIONS = {
    5: "missing_file",
    6: "image_undecodable",
    7: "image_truncated",
    8: "image_empty",
    9: "image_too_large",
    10: "empty_instruction",
    11: "unknown_edit_type",
    12: "malformed_row",
    13: "malformed_row",
    15: "path_outside",
    16: "path_outside",
    17: "path_outside",
    18: "not_a_file",
    19: "path_outside",
    20: "invalid_text",
    21: "invalid_text",
    22: "malformed_row",
}


def stored_state(backends: tuple[sessionmaker[Session], ObjectStore]) -> tuple[int, set[str]]:
    factory, store = backends
    with factory() as session:
        rows = session.scalar(select(func.count()).select_from(Task))
        referenced = set(session.scalars(select(Task.source_key)))
    assert set(store.list()) == referenced, "every object is referenced and every row has one"
    return rows or 0, referenced


def test_bad_rows_are_reported_and_leave_nothing(mixed_input: Path, backends) -> None:  # type: ignore[no-untyped-def]
    report = run_ingest(mixed_input, backends)
    assert {p.line: p.reason for p in report.problems} == EXPECTED_REJECTIONS
    assert (report.ingested, report.duplicate) == (5, 1)
    rows, keys = stored_state(backends)
    assert rows == 5 and len(keys) == 4  # red.png serves two tasks, stored once
    details = {p.line: p.detail for p in report.problems}
    assert details[6].startswith("img/garbage.png: cannot identify image file")
    assert "BytesIO" not in details[6]
    assert "--allow-outside" in details[15] and "invalid UTF-8" in details[22]
    with backends[0]() as session:
        tasks = {t.instruction: t for t in session.scalars(select(Task))}
    assert tasks["make it yellow"].edit_type == "alter"
    assert tasks["add a hat"].meta == {"origin_line": 4, "source_id": 7}
    assert (tasks["add a hat"].width, tasks["add a hat"].height) == (16, 12)


def test_reingest_adds_nothing(mixed_input: Path, backends) -> None:  # type: ignore[no-untyped-def]
    run_ingest(mixed_input, backends)
    before = stored_state(backends)
    again = run_ingest(mixed_input, backends)
    assert (again.ingested, again.duplicate) == (0, 6)
    assert stored_state(backends) == before


def test_folder_with_instructions_jsonl(tmp_path: Path, backends) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.png").write_bytes(png("red"))
    (tmp_path / "instructions.jsonl").write_text(
        json.dumps({"image": "a.png", "instruction": "paint it blue", "edit_type": "style"})
    )
    report = run_ingest(tmp_path, backends)
    assert report.ingested == 1 and not report.problems
    assert stored_state(backends)[0] == 1


def test_parquet_with_image_bytes(tmp_path: Path, backends) -> None:  # type: ignore[no-untyped-def]
    table = pa.table(
        {
            "image": [png("red"), png("blue"), b"broken"],
            "instruction": ["remove the sky", "add a dog", "make it snow"],
            "edit_type": ["remove", "add", "alter"],
        }
    )
    pq.write_table(table, tmp_path / "tasks.parquet")
    report = run_ingest(tmp_path / "tasks.parquet", backends)
    assert report.ingested == 2
    assert [(p.line, p.reason) for p in report.problems] == [(3, "image_undecodable")]
    assert stored_state(backends)[0] == 2


def test_datasets_folder_with_image_feature(tmp_path: Path, backends) -> None:  # type: ignore[no-untyped-def]
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features(
        {"image": ImageFeature(), "instruction": Value("string"), "edit_type": Value("string")}
    )
    dataset = Dataset.from_dict(
        {
            "image": [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "green")],
            "instruction": ["make it blue", ""],
            "edit_type": ["alter", "alter"],
        },
        features=features,
    )
    dataset.save_to_disk(str(tmp_path / "ds"))
    report = run_ingest(tmp_path / "ds", backends)
    assert report.ingested == 1
    assert [(p.line, p.reason) for p in report.problems] == [(2, "empty_instruction")]


def test_unreadable_inputs_are_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        read_rows(tmp_path / "nothing.jsonl")
    with pytest.raises(ValueError, match="without instructions.jsonl"):
        read_rows(tmp_path)
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="expected a .jsonl"):
        read_rows(tmp_path / "x.csv")


def test_allowed_folders_devices_and_the_size_bound(tmp_path: Path, backends) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "outside.png").write_bytes(png("orange"))
    (data / "big.png").write_bytes(png("red", (60, 60)))
    rows = [
        {"image": "../outside.png", "instruction": "make it red"},
        {"image": "/dev/zero", "instruction": "make it red"},
        {"image": "big.png", "instruction": "make it red"},
    ]
    path = write_jsonl(data, [json.dumps(row) for row in rows])
    size = (data / "big.png").stat().st_size
    limits = ImageLimits(max_side=64, max_megapixels=0.004, max_bytes=size - 1)
    report = run_ingest(path, backends, limits=limits, allowed_roots=(tmp_path, Path("/dev")))
    assert report.ingested == 1  # the allowed folder's image
    assert [(p.line, p.reason) for p in report.problems] == [
        (2, "not_a_file"),  # allowed, but a device: never read
        (3, "image_too_large"),  # over the byte bound: refused before reading
    ]
    assert f"{size} bytes > {size - 1}" in report.problems[1].detail


def test_every_dataset_a_task_came_from_is_kept_with_its_licence(
    tmp_path: Path,
    backends,  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "a.png").write_bytes(png("red"))
    (tmp_path / "b.png").write_bytes(png("blue"))
    path = write_jsonl(
        tmp_path,
        [
            json.dumps({"image": "a.png", "instruction": "make it green"}),
            json.dumps({"image": "b.png", "instruction": "make it green"}),
        ],
    )
    first = run_ingest(path, backends, origin="set-a", licence="CC-BY-4.0")
    again = run_ingest(path, backends, origin="set-a", licence="CC-BY-4.0")
    other = run_ingest(path, backends, origin="set-b", licence="MIT")
    assert (first.ingested, first.sources_added) == (2, 0)
    assert (again.ingested, again.duplicate, again.sources_added) == (0, 2, 0)
    assert (other.ingested, other.duplicate, other.sources_added) == (0, 2, 2)
    with backends[0]() as session:
        sources = session.execute(
            select(Task.source_key, TaskSource.dataset, TaskSource.licence).join(TaskSource)
        ).all()
        origins = set(session.scalars(select(Task.origin)))
    assert sorted((d, lic) for _, d, lic in sources) == [
        ("set-a", "CC-BY-4.0"), ("set-a", "CC-BY-4.0"), ("set-b", "MIT"), ("set-b", "MIT"),
    ]  # fmt: skip
    assert origins == {"set-a"}  # a task's origin is the first dataset it came from


def test_imgedit_benchmark_json(tmp_path: Path, backends) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "singleturn/animal").mkdir(parents=True)
    (tmp_path / "singleturn/animal/000.jpg").write_bytes(png("red"))
    (tmp_path / "singleturn/animal/001.jpg").write_bytes(png("blue"))
    edits = {
        "1": {"id": "animal/000.jpg", "prompt": "Make the cat's fur white.", "edit_type": "adjust"},
        "2": {"id": "animal/001.jpg", "prompt": "Put the dog on a beach.", "edit_type": "compose"},
        "3": {"id": "animal/404.jpg", "prompt": "Remove the bird.", "edit_type": "remove"},
    }
    (tmp_path / "basic_edit.json").write_text(json.dumps(edits))
    factory, store = backends
    rows, total = read_rows(tmp_path / "basic_edit.json", image_root=tmp_path / "singleturn")
    report = ingest_rows(
        rows, session_factory=factory, store=store, limits=ImageLimits(), origin="imgedit"
    )
    assert total == 3 and report.ingested == 2
    assert [(p.line, p.reason) for p in report.problems] == [(3, "missing_file")]
    with factory() as session:
        tasks = {t.instruction: t.edit_type for t in session.scalars(select(Task))}
    assert tasks == {"Make the cat's fur white.": "alter", "Put the dog on a beach.": "hybrid"}


def test_seed_data_edit_parquet_single_and_multi_turn(tmp_path: Path, backends) -> None:  # type: ignore[no-untyped-def]
    for name, colour in (("s0", "red"), ("t0", "blue"), ("e1", "green"), ("e2", "white")):
        (tmp_path / f"{name}.png").write_bytes(png(colour))
    pq.write_table(
        pa.table(
            {
                "source_image": ["s0.png"],
                "target_image": ["t0.png"],
                "instruction": ["make the red square blue"],
            }
        ),
        tmp_path / "part1.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "source_image": ["s0.png", "t0.png"],
                "instruction_1": ["add a hat", "remove the box"],
                "edit_image_1": ["e1.png", "e2.png"],
                "instruction_2": ["make the hat red", None],
                "edit_image_2": ["e2.png", None],
            }
        ),
        tmp_path / "part3.parquet",
    )
    single = run_ingest(tmp_path / "part1.parquet", backends, limits=ImageLimits())
    multi = run_ingest(tmp_path / "part3.parquet", backends, limits=ImageLimits())
    assert (single.ingested, multi.ingested) == (1, 3) and not single.problems + multi.problems
    factory, store = backends
    with factory() as session:
        tasks = {t.instruction: t for t in session.scalars(select(Task))}
    # Turn 2 edits turn 1's result (e1, green); the dataset's own result is kept as metadata.
    assert tasks["add a hat"].source_key == tasks["make the red square blue"].source_key
    green = content_key(png("green"), prefix=SOURCE_PREFIX, ext="png")
    assert tasks["make the hat red"].source_key == green
    assert tasks["make the hat red"].meta["turn"] == 2
    assert tasks["add a hat"].meta["target_image"] == "e1.png"
    assert tasks["make the red square blue"].meta["target_image"] == "t0.png"


def test_tables_without_the_named_columns_are_refused_up_front(tmp_path: Path) -> None:
    pq.write_table(pa.table({"img": [png("red")], "prompt": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="no column 'image'.*--image-column"):
        read_rows(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="no column 'instruction'.*--instruction-column"):
        read_rows(tmp_path / "t.parquet", columns=Columns(image="img"))
    rows, _ = read_rows(tmp_path / "t.parquet", columns=Columns(image="img", instruction="prompt"))
    assert [row.record["prompt"] for row in rows] == ["x"]
