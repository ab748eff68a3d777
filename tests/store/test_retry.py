"""The one retry loop: transient errors are retried with a bound, others raised at once."""

import logging

import pytest

from store.retry import with_retries


class Flaky:
    """Raises `error` for the first `failures` calls, then returns the call count."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.calls


def transient(exc: Exception) -> bool:
    return isinstance(exc, ConnectionError)


def test_transient_errors_are_retried_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    fn = Flaky(2, ConnectionError("refused"))
    with caplog.at_level(logging.WARNING, logger="store.retry"):
        result = with_retries(fn, transient=transient, retries=3, backoff_s=0, what="ping")
    assert result == 3 and fn.calls == 3
    assert [r.getMessage().split(";")[1].strip() for r in caplog.records] == [
        "retry 1 of 3 in 0.0 s",
        "retry 2 of 3 in 0.0 s",
    ]


def test_the_last_transient_error_is_raised_after_the_retries() -> None:
    fn = Flaky(10, ConnectionError("refused"))
    with pytest.raises(ConnectionError, match="refused"):
        with_retries(fn, transient=transient, retries=2, backoff_s=0, what="ping")
    assert fn.calls == 3  # one try and two retries


def test_a_permanent_error_is_raised_at_once() -> None:
    fn = Flaky(10, PermissionError("denied"))
    with pytest.raises(PermissionError):
        with_retries(fn, transient=transient, retries=5, backoff_s=0, what="ping")
    assert fn.calls == 1


def test_negative_retries_are_refused() -> None:
    with pytest.raises(ValueError, match="retries=-1"):
        with_retries(lambda: 1, transient=transient, retries=-1, backoff_s=0, what="ping")
