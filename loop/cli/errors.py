"""The command line's one error contract.

A problem the user can fix ends the command with one line on stderr, `error: <what> ...<fix>`,
exit code 2 for usage and configuration errors and 1 for failures, and no traceback unless
`--debug` (or `EDITLOOP_DEBUG=1`). Commands raise `UserError` (or let the known errors of the
store, the database and the settings through); the group that runs every command turns them into
that line. Anything else is a bug: the same one line, saying so, exit 1.
"""

import os
import traceback

import typer
from sqlalchemy.exc import DBAPIError
from typer.core import TyperGroup
from typer.exceptions import TyperException

from loop.schema import SchemaOutdated
from loop.settings import SettingsError
from store.db import DatabaseUnavailable
from store.objects import StoreUnavailable

FAILURE = 1
USAGE = 2
DEBUG_ENV = "EDITLOOP_DEBUG"


class UserError(Exception):
    """A problem the user can fix; the message names it and the fix."""

    def __init__(self, message: str, *, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code


def debug_enabled() -> bool:
    """Whether tracebacks were asked for (`--debug` or EDITLOOP_DEBUG=1)."""
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def describe(exc: Exception) -> tuple[int, str]:
    """The exit code and the one-line message of an error that ends a command."""
    if isinstance(exc, UserError):
        return exc.code, str(exc)
    if isinstance(exc, SettingsError):
        return USAGE, str(exc)
    if isinstance(exc, DatabaseUnavailable | StoreUnavailable | SchemaOutdated):
        return FAILURE, str(exc)
    if isinstance(exc, DBAPIError):
        first_line = next(iter(str(exc.orig).splitlines()), "")
        return FAILURE, (
            f"the database refused a statement ({type(exc.orig).__name__}: {first_line}); if its "
            "schema is not this editloop's, run `editloop db upgrade`"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        # A folder that cannot be created or a file that cannot be written: the machine's, not
        # editloop's, and the path says which setting to look at (EDITLOOP_DATA_DIR, ...).
        return FAILURE, f"{exc.filename}: {exc.strerror}; check the path and its permissions"
    return FAILURE, (
        f"unexpected {type(exc).__name__}: {exc} (a bug in editloop? run again with --debug "
        "for the traceback and report it)"
    )


def print_error(message: str) -> None:
    """`error: message` on stderr, on one line."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)


class ErrorContractGroup(TyperGroup):
    """The `editloop` group: every command it runs follows the error contract."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            raise  # typer's own: usage errors (exit 2), explicit exits, Ctrl-C at a prompt
        except Exception as exc:
            if debug_enabled():
                traceback.print_exc()
            code, message = describe(exc)
            print_error(message)
            ctx.exit(code)
