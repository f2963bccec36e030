"""Shared pieces of the command line, so every command behaves the same:

* ``--config`` (checked: a missing file is one clear line), settings, running a coroutine;
* errors: :class:`DigipoortGroup` turns every failure of every command (plugged-in ones
  included) into **one line** on stderr — what is wrong and what to do — and a non-zero
  exit; with ``--json`` into ``{"error": …, "code": …}`` on stdout. The traceback is shown
  only with ``digipoort --debug`` or ``DIGIPOORT_LOG_LEVEL=debug``;
* ``--json`` (:data:`json_option`) and :func:`emit`: one place that decides between
  machine-readable and human output (stdout only; logs and progress go to stderr);
* progress: :func:`step` lines and :func:`progress_bar` for long transfers (stderr, only
  drawn on a terminal).

Every package that plugs commands into ``digipoort`` (routing, adapters) uses these.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import sys
import tomllib
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from digipoort import logging as dlogging
from digipoort.config import Settings, load_settings

if TYPE_CHECKING:
    from rich.progress import Progress

T = TypeVar("T")

JSON_KEY = "digipoort.json"
DEBUG_KEY = "digipoort.debug"
SETTINGS_KEY = "digipoort.settings"


#: Exit code when the gateway refused (a fault, a refused certificate); 1 is any other
#: failure, 2 also click's wrong usage.
REFUSED = 2


class CliError(click.ClickException):
    """A failure the user can act on: ``message`` is the one line shown (what is wrong and
    what to do), ``code`` a stable word for scripts (``{"error": …, "code": …}``)."""

    def __init__(self, message: str, code: str = "error", exit_code: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.status = exit_code
        self.exit_code = exit_code  # type: ignore[misc]  # click's, per instance


def _meta() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return ctx.meta if ctx is not None else {}


def debug_enabled() -> bool:
    return bool(_meta().get(DEBUG_KEY)) or (
        os.environ.get("DIGIPOORT_LOG_LEVEL", "").lower() == "debug"
    )


def json_enabled() -> bool:
    return bool(_meta().get(JSON_KEY))


# -- options ------------------------------------------------------------------------------
def _check_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        hint = "create one with `digipoort dev init`" if not value.exists() else "not a file"
        raise CliError(f"config file {value} does not exist ({hint})", "config-missing")
    return value


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="DIGIPOORT_CONFIG",
    default=None,
    callback=_check_config,
    help="Config file (default: $DIGIPOORT_CONFIG).",
)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_KEY] = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_set_json,
    is_eager=True,
    help='Machine-readable output on stdout (errors too: {"error": …, "code": …}).',
)


def configure_logging() -> None:
    """Logs to stderr before any config is read (structlog's default would print to
    stdout): warnings only, unless ``--debug`` or ``DIGIPOORT_LOG_LEVEL`` says more."""
    level = os.environ.get("DIGIPOORT_LOG_LEVEL") or "warning"
    dlogging.configure("debug" if debug_enabled() else level)


def settings_from(config_path: Path | None, *, serving: bool = False) -> Settings:
    """Load the settings and configure logging (stderr only): by the config for
    ``serve``; for one-shot commands only warnings, unless ``--debug`` or
    ``DIGIPOORT_LOG_LEVEL`` asks for more."""
    try:
        settings = load_settings(config_path)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"config file {config_path} is not valid TOML: {exc}", "config") from exc
    except ValueError as exc:  # pydantic's ValidationError
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or str(exc)
        raise CliError(f"config {config_path or '(defaults)'}: {detail}", "config") from exc
    if debug_enabled():
        level = "debug"
    elif serving or os.environ.get("DIGIPOORT_LOG_LEVEL"):
        level = settings.log_level
    else:
        level = "warning"
    dlogging.configure(level)
    _meta()[SETTINGS_KEY] = settings
    return settings


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` in a fresh event loop and return its result."""

    async def main() -> T:
        return await fn()

    return asyncio.run(main())


# -- output -------------------------------------------------------------------------------
def emit(data: Any, human: Callable[[], None] | str | None = None) -> None:
    """The result of a command: ``data`` as JSON with ``--json``, else ``human`` (a
    callable that echoes, or a text, nothing if empty; default: the JSON too)."""
    if json_enabled() or human is None:
        click.echo(json.dumps(data, indent=2, default=str))
    elif callable(human):
        human()
    elif human:
        click.echo(human)


def emit_event(data: dict[str, Any], human: str) -> None:
    """One event of a long-running command: a JSON line with ``--json``, else ``human``."""
    click.echo(json.dumps(data, default=str) if json_enabled() else human)


def note(message: str) -> None:
    """A remark for the person (stderr), never mixed into the output."""
    click.echo(message, err=True)


def step(message: str) -> None:
    """One line per step of a long command (``setup``), on stderr."""
    click.echo(f"==> {message}", err=True)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, *, minimum: int = 1024 * 1024
) -> Iterator[Callable[[int], None] | None]:
    """A transfer progress bar on stderr, drawn only on a terminal and for ``total`` ≥
    ``minimum``: yields ``advance(nbytes)``, or None when nothing is drawn."""
    if total < minimum or not sys.stderr.isatty():
        yield None
        return
    with transfer_progress() as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.update(task, advance=n)


def transfer_progress() -> Progress:
    """The look of every transfer progress bar: name, bar, bytes, speed; on stderr, gone
    when done."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


# -- errors -------------------------------------------------------------------------------
def port_setting(settings: Settings | None, port: int) -> str | None:
    """The setting that sets ``port`` (e.g. ``http.port``), if any."""
    if settings is None:
        return None
    for section in ("http", "wus", "smtp", "pop3", "ftp"):
        config = getattr(settings, section, None)
        if config is None:
            continue
        if getattr(config, "port", None) == port:
            return f"{section}.port"
        low, high = (
            getattr(config, "passive_port_min", None),
            getattr(config, "passive_port_max", None),
        )
        if isinstance(low, int) and isinstance(high, int) and low <= port <= high:
            return f"{section}.passive_port_min/passive_port_max"
    return None


_BIND = re.compile(r"address \('?([^',]*)'?, (\d+)")


def port_in_use(exc: OSError, settings: Settings | None) -> CliError:
    from digipoort.prerequisites import port_in_use as taken

    found = _BIND.search(str(exc))
    port = int(found.group(2)) if found else None
    error = taken(port, port_setting(settings, port) if port else None)
    return CliError(str(error), error.code)


def explain(exc: BaseException) -> CliError | None:
    """The one line for an exception we know; None for the unexpected."""
    import asyncpg
    from aiormq import exceptions as amqp

    from digipoort import prerequisites
    from digipoort.clienterrors import ClientError

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, prerequisites.PrerequisiteError):
        return CliError(str(exc), exc.code)
    if isinstance(exc, ClientError):
        if exc.foutcode is None:
            return CliError(str(exc), "client")
        return CliError(str(exc), str(exc.foutcode), REFUSED)
    settings: Settings | None = _meta().get(SETTINGS_KEY)
    if isinstance(exc, asyncpg.PostgresError):
        translated = prerequisites.translate(exc, settings.database.url if settings else "")
        if translated is not None:
            return CliError(str(translated), translated.code)
    if isinstance(exc, amqp.ProbableAuthenticationError) or "ACCESS_REFUSED" in str(exc):
        return CliError(
            f"RabbitMQ refused access (ACCESS_REFUSED: wrong user or password, or no "
            f"permission): {exc}",
            "broker-auth",
        )
    if isinstance(exc, amqp.AMQPConnectionError):
        return CliError(f"RabbitMQ connection failed: {exc}", "broker-unreachable")
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return port_in_use(exc, settings)
    if isinstance(exc, FileNotFoundError):
        return CliError(f"no such file: {exc.filename}", "file-missing")
    return None


def one_line(message: str) -> str:
    """``message`` on one line: its first line, further lines in parentheses."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    return f"{lines[0]} ({'; '.join(lines[1:])})"


def fail(error: CliError) -> None:
    """Report ``error`` (one line, or JSON with ``--json``) and exit non-zero."""
    message = one_line(error.message)
    if json_enabled():
        click.echo(json.dumps({"error": message, "code": error.code}))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(error.status)


class DigipoortGroup(click.Group):
    """The root command: every error of every subcommand becomes one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            if debug_enabled():
                traceback.print_exc()
            fail(exc)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if debug_enabled():
                traceback.print_exc()
            known = explain(exc)
            if known is None:
                name = type(exc).__name__
                known = CliError(f"{name}: {exc} (run with --debug for the details)", "internal")
            fail(known)
        return None


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
