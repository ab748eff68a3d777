"""Ingest throughput: `editloop ingest` vs a plain "copy files + insert rows" baseline.

Generates N 256x256 PNG images with an instructions.jsonl, then for SQLite + local folder and
for PostgreSQL + S3 (moto) measures, side by side in one run, images/s of editloop's ingest
(decode, verify, normalise, hash, dedup, object-then-row) and of the baseline (copy the files
as they are, insert the rows without any check). Prints the ratio ingest / baseline.

    .venv/bin/python bench/ingest.py [--n 1000]
"""

import argparse
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg
from moto.server import ThreadedMotoServer
from PIL import Image
from sqlalchemy import insert

from loop.ingest import ingest_rows
from loop.sources import read_rows
from migrations import upgrade
from store.db import make_engine, make_session_factory
from store.images import ImageLimits
from store.models import Task
from store.objects import LocalStore, ObjectStore
from store.s3 import S3Store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def make_images(folder: Path, n: int) -> None:
    """`n` distinct smooth 256x256 images (a few kB each as PNG) and their instructions."""
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    for i in range(n):
        a, b, c = rng.uniform(0, 1, 3)
        pixels = np.stack([a * xx, b * yy, c * (1 - xx) * yy], axis=-1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i:05d}.png")
        rows.append(
            {"image": f"{i:05d}.png", "instruction": f"edit number {i}", "edit_type": "alter"}
        )
    (folder / "instructions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def fresh_postgres() -> tuple[str, Callable[[], None]]:
    name = f"editloop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def run_ingest(folder: Path, url: str, store: ObjectStore) -> float:
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    rows, _ = read_rows(folder)
    started = time.perf_counter()
    report = ingest_rows(
        rows, session_factory=factory, store=store, limits=ImageLimits(), origin="bench"
    )
    elapsed = time.perf_counter() - started
    assert report.ingested > 0 and not report.problems, report
    return report.ingested / elapsed


def run_baseline(folder: Path, url: str, store: ObjectStore) -> float:
    """Copy each file under a key and insert one row per file in one transaction, unchecked."""
    upgrade(url)
    engine = make_engine(url)
    rows = [json.loads(line) for line in (folder / "instructions.jsonl").read_text().splitlines()]
    started = time.perf_counter()
    values = []
    for row in rows:
        key = f"baseline/{row['image']}"
        store.put(key, (folder / row["image"]).read_bytes(), "image/png")
        values.append(
            {
                "source_key": key,
                "instruction": row["instruction"],
                "instruction_sha256": uuid.uuid4().hex,
                "edit_type": row["edit_type"],
                "origin": "baseline",
                "width": 256,
                "height": 256,
                "meta": {},
            }
        )
    with engine.begin() as connection:
        connection.execute(insert(Task), values)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of images")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="editloop-bench-"))
    images = work / "images"
    images.mkdir()
    make_images(images, args.n)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()

    def s3() -> S3Store:
        return S3Store(
            endpoint=f"{host}:{port}",
            access_key="bench",
            secret_key="bench",
            bucket=f"bench-{uuid.uuid4().hex[:8]}",
        )

    results = []
    try:
        for label in ("SQLite + local", "PostgreSQL + S3 (moto)"):
            rates = {}
            for mode, fn in (("baseline", run_baseline), ("ingest", run_ingest)):
                if label.startswith("SQLite"):
                    root = Path(tempfile.mkdtemp(dir=work))
                    rates[mode] = fn(images, f"sqlite:///{root / 'db.sqlite'}", LocalStore(root))
                else:
                    url, drop = fresh_postgres()
                    try:
                        rates[mode] = fn(images, url, s3())
                    finally:
                        drop()
            results.append((label, rates["ingest"], rates["baseline"]))
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.n} images of 256x256, one run")
    print(f"{'backend':<24}{'ingest img/s':>14}{'baseline img/s':>16}{'ratio':>8}")
    for label, ingest_rate, baseline_rate in results:
        ratio = ingest_rate / baseline_rate
        print(f"{label:<24}{ingest_rate:>14.1f}{baseline_rate:>16.1f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
