"""Shared fixtures: real services, tiny models built once, and one torch thread per test.

One thread: on a small shared CPU, several torch threads per test process oversubscribe the
cores and the tiny models run 5-20x slower, not faster.
"""

import os
from collections.abc import Iterator

import pytest
import torch

# Nothing may be fetched from a hub at test time; tiny models are built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.judges",
    "tests.fixtures.editors",
    "tests.fixtures.workers",
    "tests.fixtures.loop",
]


# Fixtures that reach PostgreSQL, Redis, RabbitMQ or an S3 (moto) server: a test using one, even
# through another fixture, is marked `services`, so that `pytest -m "not services"` runs anywhere.
# (Parametrized fixtures mark their service parameters themselves.)
SERVICE_FIXTURES = {
    "postgres_server", "postgres_url", "moto_endpoint", "s3_store", "moto_process",
    "loop_setup_factory",
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
