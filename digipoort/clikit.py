"""Shared pieces of the command line: the --config option, settings, running a coroutine.

Every package that plugs commands into ``digipoort`` (routing, adapters) uses these, so
the options and behaviour are the same everywhere.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from digipoort import logging as dlogging
from digipoort.config import Settings, load_settings

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="DIGIPOORT_CONFIG",
    default=None,
    help="Config file (default: $DIGIPOORT_CONFIG).",
)


def settings_from(config_path: Path | None) -> Settings:
    """Load the settings and configure logging by them."""
    settings = load_settings(config_path)
    dlogging.configure(settings.log_level)
    return settings


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` in a fresh event loop and return its result."""

    async def main() -> T:
        return await fn()

    return asyncio.run(main())


async def until_signalled() -> None:
    """Return on SIGINT or SIGTERM (signal handlers only where the loop allows them)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (e.g. called from a test runner)
    await stop.wait()
