"""The usual mistakes, each one line on stderr and a non-zero exit (real PostgreSQL,
RabbitMQ and sockets): a missing config, a missing/unreachable/refusing database, a
refusing/unreachable broker, an unreachable management API (setup changes nothing),
ports in use, a second ``serve`` on the same config."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from digipoort import provision
from digipoort.clikit import one_line, port_setting
from digipoort.config import Settings
from tests.cli_support import cli, http_ready, json_error, one_error_line, run_cli
from tests.support import ALFA, AMQP, MGMT, PG_ADMIN, Env, free_port, wait_for

KENMERK = "00000000-0000-0000-0000-000000000001"

#: Every command that takes --config, with the other arguments it needs.
COMMANDS = [
    ["setup"],
    ["serve"],
    ["status", KENMERK],
    ["db", "migrate"],
    ["registry", "load"],
    ["recipients", "provision"],
    ["dead", "list"],
    ["dead", "show", KENMERK],
    ["dead", "retry", KENMERK],
    ["dead", "discard", KENMERK, "--reason", "x"],
    ["flows", "copies", "list", "CBS-Detailhandel"],
    ["participants", "returns", ALFA],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_missing_config_is_one_line_for_every_command(command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    line = one_error_line(run_cli(*command, "--config", str(missing)))
    assert str(missing) in line and "does not exist" in line and "dev init" in line


def test_missing_config_for_submit_and_via_environment(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    pki = tmp_path  # exists=True paths only need to exist
    (pki / "a.crt").write_text("x")
    result = run_cli(
        "submit", "--config", str(missing), "--cert", str(pki / "a.crt"), "--key",
        str(pki / "a.crt"), "--berichtsoort", "Omzetbelasting", str(pki / "a.crt"),
    )  # fmt: skip
    assert "does not exist" in one_error_line(result)
    line = one_error_line(run_cli("status", KENMERK, env={"DIGIPOORT_CONFIG": str(missing)}))
    assert str(missing) in line


def test_errors_as_json_on_stdout(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    error = json_error(run_cli("status", KENMERK, "--config", str(missing), "--json"))
    assert error["code"] == "config-missing" and str(missing) in error["error"]
    error = json_error(run_cli("setup", "--json", "--config", str(missing)))
    assert error["code"] == "config-missing"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    result = run_cli("--debug", "status", KENMERK, "--config", missing)
    assert result.exit_code == 1 and "Traceback" in result.stderr
    result = run_cli("status", KENMERK, "--config", missing, env={"DIGIPOORT_LOG_LEVEL": "debug"})
    assert result.exit_code == 1 and "Traceback" in result.stderr


# -- serve: the database and the broker ---------------------------------------------------
async def test_serve_without_database_says_run_setup(env: Env) -> None:
    name = f"dptest_missing_{uuid.uuid4().hex[:8]}"
    result = await cli(
        "serve", "--config", str(env.config_path),
        env={"DIGIPOORT_DATABASE__URL": f"{PG_ADMIN}/{name}"},
    )  # fmt: skip
    line = one_error_line(result)
    assert name in line and "does not exist" in line and "digipoort setup" in line


async def test_serve_with_postgresql_unreachable(env: Env) -> None:
    port = free_port()
    result = await cli(
        "serve", "--config", str(env.config_path),
        env={"DIGIPOORT_DATABASE__URL": f"postgresql://postgres@127.0.0.1:{port}/x"},
    )  # fmt: skip
    line = one_error_line(result)
    assert f"PostgreSQL is not reachable at 127.0.0.1:{port}" in line
    assert "connection refused" in line and "DIGIPOORT_DATABASE__URL" in line


async def test_serve_with_postgresql_login_refused(env: Env) -> None:
    result = await cli(
        "serve", "--config", str(env.config_path),
        env={"DIGIPOORT_DATABASE__URL": "postgresql://dptest_nobody@127.0.0.1:5432/postgres"},
    )  # fmt: skip
    line = one_error_line(result)
    assert "refused the login of user 'dptest_nobody'" in line and "database.url" in line


async def test_serve_with_broker_password_wrong(env: Env) -> None:
    bad = AMQP.replace(":guest@", ":wrong-password@") + f"/{env.name}"
    assert bad != f"{AMQP}/{env.name}"
    result = await cli(
        "serve", "--config", str(env.config_path), env={"DIGIPOORT_BROKER__URL": bad}
    )
    line = one_error_line(result)
    assert "RabbitMQ" in line and "ACCESS_REFUSED" in line and "DIGIPOORT_BROKER__URL" in line
    assert "wrong-password" not in line  # secrets never in messages


async def test_serve_with_broker_unreachable_or_vhost_missing(env: Env) -> None:
    port = free_port()
    result = await cli(
        "serve", "--config", str(env.config_path),
        env={"DIGIPOORT_BROKER__URL": f"amqp://guest:guest@127.0.0.1:{port}/{env.name}"},
    )  # fmt: skip
    line = one_error_line(result)
    assert f"RabbitMQ is not reachable at 127.0.0.1:{port}" in line
    result = await cli(
        "serve", "--config", str(env.config_path),
        env={"DIGIPOORT_BROKER__URL": f"{AMQP}/dptest_no_such_vhost"},
    )  # fmt: skip
    line = one_error_line(result)
    assert "vhost 'dptest_no_such_vhost'" in line and "digipoort setup" in line


# -- setup checks everything before it changes anything -----------------------------------
@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("management", "management API is not reachable"),
        ("amqp", "RabbitMQ (AMQP) is not reachable"),
        ("postgresql", "PostgreSQL is not reachable"),
    ],
)
async def test_setup_with_a_prerequisite_missing_changes_nothing(
    env: Env, broken: str, message: str
) -> None:
    name = f"dptest_setup_{uuid.uuid4().hex[:8]}"
    dead = free_port()
    overrides = {
        "DIGIPOORT_DATABASE__URL": f"{PG_ADMIN}/{name}",
        "DIGIPOORT_BROKER__URL": f"{AMQP}/{name}",
        "DIGIPOORT_BROKER__MANAGEMENT_URL": MGMT,
    }
    if broken == "management":
        overrides["DIGIPOORT_BROKER__MANAGEMENT_URL"] = f"http://guest:guest@127.0.0.1:{dead}"
    elif broken == "amqp":
        overrides["DIGIPOORT_BROKER__URL"] = f"amqp://guest:guest@127.0.0.1:{dead}/{name}"
    else:
        overrides["DIGIPOORT_DATABASE__URL"] = f"postgresql://postgres@127.0.0.1:{dead}/{name}"
    result = await cli("setup", "--config", str(env.config_path), env=overrides)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    admin = await asyncpg.connect(f"{PG_ADMIN}/postgres")
    try:
        assert not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await admin.close()
    vhosts = await provision.Management(MGMT).request("GET", "/vhosts")
    assert isinstance(vhosts, list) and name not in {v["name"] for v in vhosts}


async def test_setup_and_friends_report_json(env: Env) -> None:
    cfg = str(env.config_path)
    result = await cli("setup", "--config", cfg, "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)  # nothing but the JSON on stdout: logs go to stderr
    assert done["vhost"] == env.name and done["migrations_applied"] == []
    assert "==> registry" in result.stderr  # the step lines
    result = await cli("db", "migrate", "--config", cfg, "--json")
    assert json.loads(result.stdout) == {"applied": []}
    result = await cli("registry", "load", "--config", cfg, "--json")
    assert json.loads(result.stdout) == {"changes": []}
    result = await cli("flows", "copies", "list", "CBS-Detailhandel", "--config", cfg, "--json")
    assert json.loads(result.stdout)["flow"] == "CBS-Detailhandel"
    result = await cli("dead", "list", "--config", cfg, "--json")
    assert json.loads(result.stdout) == []
    result = await cli("status", KENMERK, "--config", cfg, "--json")
    assert json_error(result) == {"error": f"unknown kenmerk {KENMERK}", "code": "unknown-kenmerk"}


# -- ports --------------------------------------------------------------------------------
@contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield s


@pytest.mark.parametrize("section", ["http", "wus"])
async def test_port_in_use_names_port_and_setting(env: Env, section: str) -> None:
    port = getattr(env.settings, section).port
    with listening(port):
        result = await cli("serve", "--config", str(env.config_path))
    line = one_error_line(result)
    env_var = f"DIGIPOORT_{section.upper()}__PORT"
    assert f"port {port} (setting {section}.port;" in line and env_var in line
    assert "already in use" in line


def test_port_setting_and_one_line() -> None:
    settings = Settings()
    assert port_setting(settings, settings.http.port) == "http.port"
    assert port_setting(settings, settings.ftp.passive_port_min + 1) == (
        "ftp.passive_port_min/passive_port_max"
    )
    assert port_setting(settings, 1) is None
    assert one_line("ALS140: De berichtsoort is onbekend.\n\nberichtsoort 'X'") == (
        "ALS140: De berichtsoort is onbekend. (berichtsoort 'X')"
    )


async def test_second_serve_on_the_same_config_refuses(env: Env) -> None:
    """Without --processes nothing shares a port (no SO_REUSEPORT): the second serve
    says the port is taken and exits; the first keeps serving."""
    environ = {**os.environ, "DIGIPOORT_LOG_LEVEL": "warning"}
    base = [sys.executable, "-m", "digipoort.cli", "serve", "--config", str(env.config_path)]
    first = subprocess.Popen(
        [*base, "--components", "intake,wus"], env=environ,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        port = env.settings.http.port
        await wait_for(lambda: http_ready(port), timeout=60, what="first serve ready")
        second = await asyncio.to_thread(
            subprocess.run, [*base, "--components", "intake,wus"], env=environ,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert second.stdout == ""
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"port {port} (setting http.port;" in second.stderr
        supervised = await asyncio.to_thread(
            subprocess.run, [*base, "--components", "intake", "--processes", "2"], env=environ,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert supervised.returncode == 1 and "already in use" in supervised.stderr
        assert await http_ready(port)
    finally:
        first.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(first.wait, 30)
        out, err = first.communicate()
    assert rc == 0, err.decode()
    assert out == b""  # logs go to stderr only


async def test_gateway_ports_are_exclusive_outside_the_supervisor(env: Env) -> None:
    """The gateway's own sockets carry no SO_REUSEPORT unless it is a worker of
    ``serve --processes``, so another process cannot silently join them."""
    await env.start_gateway(components=("intake", "wus"))
    for port in (env.settings.http.port, env.settings.wus.port):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                s.bind(("127.0.0.1", port))
