"""Ingest: every bad-row kind reported and leaving nothing behind; re-ingest adds nothing."""

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from loop.ingest import IngestReport, ingest_rows, read_rows
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.images import ImageLimits
from store.models import Task
from store.objects import LocalStore, ObjectStore


def png(colour: str, size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(params=["sqlite+local", "postgres+s3"])
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
    path: Path, backends: tuple[sessionmaker[Session], ObjectStore], **kwargs: object
) -> IngestReport:
    factory, store = backends
    rows, _ = read_rows(path)
    limits = ImageLimits(max_side=64, max_megapixels=0.004)
    return ingest_rows(rows, session_factory=factory, store=store, limits=limits, origin="t")


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
    ]
    assert extra
    return write_jsonl(data, lines)


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
    assert (report.ingested, report.duplicate) == (4, 1)
    rows, keys = stored_state(backends)
    assert rows == 4 and len(keys) == 3  # red.png serves two tasks, stored once
    with backends[0]() as session:
        tasks = {t.instruction: t for t in session.scalars(select(Task))}
    assert tasks["make it yellow"].edit_type == "alter"
    assert tasks["add a hat"].meta == {"origin_line": 4, "source_id": 7}
    assert (tasks["add a hat"].width, tasks["add a hat"].height) == (16, 12)


def test_reingest_adds_nothing(mixed_input: Path, backends) -> None:  # type: ignore[no-untyped-def]
    run_ingest(mixed_input, backends)
    before = stored_state(backends)
    again = run_ingest(mixed_input, backends)
    assert (again.ingested, again.duplicate) == (0, 5)
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
    with pytest.raises(ValueError, match="expected .jsonl"):
        read_rows(tmp_path / "x.csv")
