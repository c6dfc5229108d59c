"""What every command shares: logging, the error boundary, JSON printing."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from rsicrc.errors import RsicrcError

T = TypeVar("T")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(message)s" if verbose else "%(message)s",
                        stream=sys.stderr)


def guarded(fn: Callable[[], T]) -> T:
    """Run a library call; expected failures become one line on stderr and exit code 2."""
    try:
        return fn()
    except RsicrcError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def app(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, add_completion=False, no_args_is_help=True,
                       pretty_exceptions_enable=False, rich_markup_mode=None)
