"""One retry loop for transient I/O errors (a database or store that is down for a moment).

The caller says which errors are transient; anything else is a real answer and raised at once.
Each retry is logged (warning), so that an outage is visible while it is being ridden out.
"""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_DELAY_S = 10.0


def with_retries(
    fn: Callable[[], T],
    *,
    transient: Callable[[Exception], bool],
    retries: int,
    backoff_s: float,
    what: str,
) -> T:
    """Run `fn`; while it raises an error `transient` accepts, wait (exponential backoff from
    `backoff_s`, capped at 10 s) and run it again, at most `retries` more times. The last error
    is re-raised unchanged: the caller turns it into its own message."""
    if retries < 0:
        raise ValueError(f"retries={retries}: must be >= 0")
    delay = backoff_s
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == retries or not transient(exc):
                raise
            first_line = next(iter(str(exc).splitlines()), "")
            log.warning(
                "%s failed (%s: %s); retry %d of %d in %.1f s",
                what, type(exc).__name__, first_line, attempt + 1, retries, delay,
            )  # fmt: skip
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)
    raise AssertionError("unreachable")
