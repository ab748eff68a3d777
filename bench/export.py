"""Export throughput: `editloop export` rows/s per format vs reading the same rows and images.

N accepted edits (N/2 tasks with two samples each; PNG sources and edits of 256x256 pixels,
about 145 kB each, `--size` to change) are written straight into the database and the store.
Then, for SQLite + local folder and for PostgreSQL + S3 (moto), side by side in one run:

- baseline: the same rows read the same way (the export's own selection, in pages) and both
  images of each row read from the store by the same number of threads; nothing written;
- export, per format (hf, webdataset, jsonl): the whole `export_dataset` into a local folder
  (selection through the pool's filter, row building, SHA-256 of every image, writing, dataset
  card and histograms, verification, publishing, the `export` row).

Prints rows/s and the ratio export / baseline (the mean of a baseline before and after the
exports); target >= 0.5. For scale it also prints a bare copy: the baseline that also appends
every image's bytes to one file, the least any format's writing costs. The libraries the
writers import (datasets, pyarrow, webdataset, matplotlib; about 1.5 s once per command) are
imported before timing.

    .venv/bin/python bench/export.py [--rows 5000] [--workers 4] [--size 256] [--backends both]
"""
# ruff: noqa: E402

import argparse
import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg
from moto.server import ThreadedMotoServer
from PIL import Image
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from loop.export.columns import ExportFormat, ExportKind
from loop.export.histograms import histogram_png
from loop.export.pipeline import ExportOptions, export_dataset, make_writer
from loop.export.publish import LocalTarget
from loop.export.selection import iter_records, rows_of
from loop.export.stats import ExportStats
from loop.training.pool import PoolFilter
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.images import encode_png
from store.models import (
    Attempt,
    AttemptStatus,
    Judgment,
    Round,
    RoundStatus,
    Run,
    Task,
    TaskSource,
)
from store.objects import LocalStore, ObjectStore, content_key
from store.s3 import S3Store
from store.taxonomy import Verdict

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PAGE = 500
POOL_FILTER = PoolFilter(hindsight=False)


def image(index: int, size: int) -> bytes:
    """A distinct size x size PNG: a gradient with noise (about 145 kB at 256 px, 12 kB at 64)."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * rng.uniform(80, 200, 3)
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    return encode_png(Image.fromarray(pixels))


def seed(
    factory: sessionmaker[Session], store: ObjectStore, rows: int, workers: int, size: int
) -> None:
    """`rows` accepted edits of `rows // 2` tasks, objects first, rows in bulk."""
    tasks = rows // 2
    with ThreadPoolExecutor(2 * workers) as pool:
        images = list(pool.map(lambda index: image(index, size), range(tasks + rows)))
        keys = [
            content_key(data, prefix="sources" if i < tasks else "edits", ext="png")
            for i, data in enumerate(images)
        ]
        list(pool.map(lambda key, data: store.put(key, data, "image/png"), keys, images))
    names = ["Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"]
    with factory() as session, session.begin():
        session.execute(insert(Run), [{"id": 1, "name": "bench", "config": {}}])
        session.execute(
            insert(Round), [{"id": 1, "run_id": 1, "number": 0, "status": RoundStatus.FINISHED}]
        )
        session.execute(
            insert(Task),
            [
                {
                    "id": t + 1,
                    "source_key": keys[t],
                    "instruction": f"edit {t}",
                    "instruction_sha256": hashlib.sha256(f"edit {t}".encode()).hexdigest(),
                    "edit_type": "alter",
                    "origin": "bench",
                    "width": 64,
                    "height": 64,
                    "meta": {},
                }
                for t in range(tasks)
            ],  # fmt: skip
        )
        session.execute(
            insert(TaskSource),
            [{"task_id": t + 1, "dataset": "bench", "licence": "CC0-1.0"} for t in range(tasks)],
        )
        session.execute(
            insert(Attempt),
            [
                {
                    "id": a + 1,
                    "round_id": 1,
                    "task_id": a // 2 + 1,
                    "sample_index": a % 2,
                    "depth": 0,
                    "instruction": f"edit {a // 2}",
                    "input_key": keys[a // 2],
                    "seed": a,
                    "output_key": keys[tasks + a],
                    "status": AttemptStatus.JUDGED,
                    "verdict": Verdict.SUCCESS,
                }
                for a in range(rows)
            ],  # fmt: skip
        )
        session.execute(
            insert(Judgment),
            [
                {
                    "attempt_id": a + 1,
                    "score_following": 4.0 + a % 2,
                    "score_quality": 4.0,
                    "score_preservation": 4.5,
                    "overall": 4.2,
                    "dimension_names": {"names": names},
                    "parse_status": "ok",
                    "verdict": Verdict.SUCCESS,
                    "reflector_tag": "Success",
                    "judge_model": "judge",
                    "reflector_model": "reflector",
                }
                for a in range(rows)
            ],  # fmt: skip
        )


def read_only(
    factory: sessionmaker[Session], store: ObjectStore, workers: int, copy_to: Path | None = None
) -> int:
    """The baseline: the same rows read the same way (the export's selection, in pages) and both
    images of each row read from the store by the same number of threads; nothing written. With
    `copy_to`, the images' bytes are also appended to that one file (a bare copy: the floor of
    any format's writing)."""
    rows = rows_of(
        iter_records(factory, POOL_FILTER, ExportKind.EDITS, page_size=PAGE), ExportKind.EDITS
    )
    count = 0
    with ThreadPoolExecutor(workers) as pool, contextlib.ExitStack() as stack:
        sink = stack.enter_context(copy_to.open("wb")) if copy_to else None
        for images in pool.map(lambda row: [store.get(k) for k in row.image_keys.values()], rows):
            count += len(images) == 2
            if sink is not None:
                for data in images:
                    sink.write(data)
    if copy_to is not None:
        copy_to.unlink()
    return count


def export(
    factory: sessionmaker[Session], store: ObjectStore, workers: int, fmt: ExportFormat, out: Path
) -> int:
    options = ExportOptions(
        kind=ExportKind.EDITS,
        export_format=fmt,
        pool_filter=POOL_FILTER,
        workers=workers,
        page_size=PAGE,
    )
    return export_dataset(
        factory=factory, store=store, target=LocalTarget(out), options=options
    ).rows


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    rows = fn()
    return rows, rows / (time.perf_counter() - started)


def warm_up() -> None:
    """Import what the writers and the card import (once per command: start-up, not rate)."""
    for module in ExportFormat:
        make_writer(
            ExportOptions(kind=ExportKind.EDITS, export_format=module), Path(tempfile.mkdtemp())
        )
    histogram_png(ExportStats())


def measure(
    url: str, store: ObjectStore, rows: int, workers: int, size: int, work: Path
) -> dict[str, float]:
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    seed(factory, store, rows, workers, size)
    rates = {}
    count, before = timed(lambda: read_only(factory, store, workers))
    assert count == rows, count
    for fmt in ExportFormat:
        count, rates[fmt.value] = timed(
            lambda fmt=fmt: export(factory, store, workers, fmt, work / "out")
        )
        assert count == rows, count
        shutil.rmtree(work / "out")
    _, rates["copy"] = timed(lambda: read_only(factory, store, workers, work / "copy.bin"))
    _, after = timed(lambda: read_only(factory, store, workers))
    rates["baseline"] = (before + after) / 2
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000, help="accepted edits to export")
    parser.add_argument("--workers", type=int, default=4, help="image-fetching threads")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument(
        "--backends", choices=["both", "sqlite", "postgres"], default="both", help="which to run"
    )
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    warm_up()
    work = Path(tempfile.mkdtemp(prefix="editloop-bench-export-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    name = f"editloop_bench_{uuid.uuid4().hex[:8]}"
    results = {}
    try:
        if args.backends != "postgres":
            local = LocalStore(work / "objects")
            url = f"sqlite:///{work / 'db.sqlite'}"
            results["SQLite + local"] = measure(
                url, local, args.rows, args.workers, args.size, work
            )
        if args.backends != "sqlite":
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            s3 = S3Store(endpoint=f"{host}:{port}", access_key="bench", secret_key="bench",
                         bucket=f"bench-{uuid.uuid4().hex[:8]}")  # fmt: skip
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
            results["PostgreSQL + S3 (moto)"] = measure(
                url, s3, args.rows, args.workers, args.size, work
            )
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.rows} rows ({args.size}x{args.size} PNGs), {args.workers} threads, one run")
    print(f"{'backend':<24}{'format':<12}{'export rows/s':>14}{'read rows/s':>13}{'ratio':>7}"
          f"{'copy rows/s':>13}{'export/copy':>13}")  # fmt: skip
    for label, rates in results.items():
        for fmt in ExportFormat:
            rate = rates[fmt.value]
            print(f"{label:<24}{fmt.value:<12}{rate:>14.0f}{rates['baseline']:>13.0f}"
                  f"{rate / rates['baseline']:>7.2f}{rates['copy']:>13.0f}"
                  f"{rate / rates['copy']:>13.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
