"""Helpers of the CLI tests: run ``digipoort`` in-process (CliRunner, stdout and stderr
apart) and check the one-line error contract."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from click.testing import CliRunner, Result

from digipoort.cli import main


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, input=input)


async def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """``digipoort ARGS`` in a thread (its own event loop), stdout and stderr apart."""
    return await asyncio.to_thread(run_cli, *args, env=env)


def one_error_line(result: Result, *, exit_code: int = 1) -> str:
    """The error of a failed command: exactly one line on stderr, nothing on stdout, no
    traceback, the expected exit code. Returns the line."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    assert "Traceback" not in result.stderr
    return lines[0]


def json_error(result: Result, *, exit_code: int = 1) -> dict[str, Any]:
    """The error of a failed command run with --json: one JSON object on stdout."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    data = json.loads(result.stdout)
    assert set(data) == {"error", "code"}, data
    assert "\n" not in data["error"]
    return dict(data)


async def http_ready(port: int) -> bool:
    """``/readyz`` of a gateway on ``port`` answers 200."""
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{port}/readyz") as r,
        ):
            return r.status == 200
    except aiohttp.ClientError:
        return False
