"""The loop on real services: PostgreSQL, S3 (moto), Redis or RabbitMQ, and two real
`editloop worker` processes with the tiny editor and the tiny judge.

The tiny judge is random, so its answers are unparseable and every attempt ends `Failed` and
restarts until its tries are spent: the mechanics (dispatch, batching, follow-ups, terminal
states, exactly-once effects, metrics equal to the rows) are what is checked, not the verdicts.
"""

import pytest
from sqlalchemy import select

from store.models import Judgment

REDIS_URL = "redis://127.0.0.1:6379/7"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.mark.parametrize("broker", [REDIS_URL, AMQP_URL], ids=["redis", "rabbitmq"])
def test_loop_with_two_celery_workers(broker: str, moto_endpoint: str, loop_setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = loop_setup_factory(moto_endpoint, broker)
    setup.workers(2)
    setup.run(setup.config("two-workers"))
    setup.assert_exactly_once()
    with setup.factory() as session:
        judged = session.scalars(select(Judgment)).all()
    assert judged, "the judge stage ran"
    # Random tiny judge: unparseable answers are Failed with the raw text kept, never a score.
    assert all(j.parse_status == "unparseable" and j.raw_judge_output is not None for j in judged)
    assert all(j.overall is None for j in judged)
