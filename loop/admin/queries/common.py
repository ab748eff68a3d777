"""What the admin's reads share: their errors, and the verdict that counts.

A verdict "counts" as the reviewer's override when there is one, else the judge's (the rule of
`loop.training.pool.effective_verdict`, written here over the attempt's copy of the verdict so
that failed edits, which have no judgment, count too).
"""

from typing import Any

from sqlalchemy import func

from store.models import (
    Attempt,
    Judgment,
)


class NotFound(LookupError):
    """No row with the id asked for; the message names it."""

    def __str__(self) -> str:
        return str(self.args[0])


class BadValue(ValueError):
    """A filter or body value that cannot be used; `field` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def effective_verdict() -> Any:
    """The verdict that counts, as SQL (the judgment joined outer on the attempt)."""
    return func.coalesce(Judgment.override_verdict, Attempt.verdict)


def _value(enum_or_none: Any) -> Any:
    return enum_or_none.value if enum_or_none is not None else None
