"""The compose stack for real (slow, opt-in: ``pytest -m slow tests/test_deploy_stack.py``).

Builds the images from Debian packages (deploy/build-local-base.sh: needs root, debootstrap,
a running Docker engine and docker-compose; skipped without them), starts the whole stack
(setup, the gateway split by component, RabbitMQ, PostgreSQL, Prometheus) under a project
name and host ports of its own, submits one envelope over each koppelvlak (WUS, SMTP,
FTPS) from the host with the project's CLI clients, waits until every recipient has it
(status 400, asked over WUS), checks that the archive in the ingress container holds and
verifies the evidence (`digipoort archive show/verify`, and the archive CronJob's script),
that Prometheus scrapes every gateway container, stops the stack (every gateway exits 0
after draining) and removes it with its volumes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from digipoort.prerequisites import _listeners
from tests.cli_support import cli
from tests.support import SAMPLES, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
ALFA = "00000099100000010000"
GATEWAY_SERVICES = ("ingress", "stages", "deliverer", "ops")


def _engine_available() -> str | None:
    """Why the stack cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, docker)"
    for tool in ("docker", "docker-compose", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "no Docker engine answers (start dockerd)"
    return None


def _passive_block(size: int = 10) -> int:
    """A block of ports below the ephemeral range that nothing listens on."""
    busy = {port for _, port in _listeners() or []}
    while True:
        low = random.randrange(20000, 29000, size)
        if not busy & set(range(low, low + size)):
            return low


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.project = f"dptest{uuid.uuid4().hex[:8]}"
        passive = _passive_block()
        self.ports = {
            "DIGIPOORT_WUS_PORT": free_port(),
            "DIGIPOORT_SMTP_PORT": free_port(),
            "DIGIPOORT_POP3_PORT": free_port(),
            "DIGIPOORT_FTP_PORT": free_port(),
            "DIGIPOORT_FTP_PASSIVE_MIN": passive,
            "DIGIPOORT_FTP_PASSIVE_MAX": passive + 9,
            "DIGIPOORT_RABBITMQ_MANAGEMENT_PORT": free_port(),
            "DIGIPOORT_PROMETHEUS_PORT": free_port(),
            "DIGIPOORT_GRAFANA_PORT": free_port(),
        }
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            **{k: str(v) for k, v in self.ports.items()},
        }
        self.config = tmp / "config"
        self.timings: dict[str, float] = {}

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "-f", "compose.yaml", "-f", "compose.local.yaml", *args],
            cwd=COMPOSE_DIR, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}_{service}_{index}"

    def inspect(self, service: str, index: int = 1) -> dict[str, Any]:
        out = subprocess.run(
            ["docker", "inspect", self.container(service, index)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return dict(json.loads(out.stdout)[0]["State"]) if out.returncode == 0 else {}

    @property
    def wus_url(self) -> str:  # the config's wus.public_url: wsa:To must match it
        return f"https://localhost:{self.ports['DIGIPOORT_WUS_PORT']}"


def _timed(stack: Stack, what: str, fn: Any) -> Any:
    start = time.monotonic()
    result = fn()
    stack.timings[what] = round(time.monotonic() - start, 1)
    return result


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    if (why := _engine_available()) is not None:
        pytest.skip(why)
    s = Stack(tmp_path)
    build = _timed(
        s, "build images",
        lambda: subprocess.run(
            [str(ROOT / "deploy" / "build-local-base.sh")],
            capture_output=True, text=True, timeout=1800, check=False,
        ),
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    try:
        yield s
    finally:
        logs = s.compose("logs", "--no-color", "--tail", "50", timeout=120)
        (tmp_path / "compose.log").write_text(logs.stdout + logs.stderr)
        s.compose("down", "-v", "--remove-orphans", timeout=300)
        print(f"deploy stack timings (s): {s.timings}")


async def test_compose_stack_accepts_and_delivers_over_every_koppelvlak(stack: Stack) -> None:
    up = await asyncio.to_thread(_timed, stack, "compose up", lambda: stack.compose("up", "-d"))
    assert up.returncode == 0, up.stderr[-3000:]
    assert stack.inspect("setup").get("ExitCode") == 0

    async def all_healthy() -> bool:
        states = [stack.inspect(name) for name in GATEWAY_SERVICES]
        return all(st.get("Health", {}).get("Status") == "healthy" for st in states)

    start = time.monotonic()
    await wait_for(all_healthy, timeout=300, what="every gateway container healthy (/readyz)")
    stack.timings["healthy after up"] = round(time.monotonic() - start, 1)

    # the clients need the PKI the setup service generated into the config volume
    copy = subprocess.run(
        ["docker", "cp", f"{stack.container('setup')}:/config", str(stack.config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert copy.returncode == 0, copy.stderr
    pki = stack.config / "pki"
    identity = ["--cert", str(pki / f"{ALFA}.crt"), "--key", str(pki / f"{ALFA}.key"),
                "--ca", str(pki / "ca.crt")]  # fmt: skip
    urls = {
        "wus": stack.wus_url,
        "smtp": f"smtp://127.0.0.1:{stack.ports['DIGIPOORT_SMTP_PORT']}/digipoort.test",
        "ftp": f"ftps://127.0.0.1:{stack.ports['DIGIPOORT_FTP_PORT']}",
    }
    cases = {
        "wus": ("Omzetbelasting", SAMPLES / "omzetbelasting.xml", 1),
        "smtp": ("CBS-Detailhandel", SAMPLES / "cbs-detailhandel.xml", 2),
        "ftp": ("CBS-Detailhandel", SAMPLES / "cbs-detailhandel.xml", 2),
    }
    kenmerken: dict[str, tuple[str, int]] = {}
    for via, (soort, sample, recipients) in cases.items():
        start = time.monotonic()
        result = await cli(
            "submit", "--via", via, "--url", urls[via], *identity, "--berichtsoort", soort,
            "--aanleverkenmerk", f"stack-{via}-{uuid.uuid4().hex[:8]}", "--json", str(sample),
        )  # fmt: skip
        stack.timings[f"submit {via}"] = round(time.monotonic() - start, 2)
        assert result.exit_code == 0, (via, result.output)
        kenmerken[via] = (json.loads(result.stdout)["kenmerk"], recipients)

    for via, (kenmerk, recipients) in kenmerken.items():

        async def delivered(kenmerk: str = kenmerk, recipients: int = recipients) -> bool:
            result = await cli(
                "status", kenmerk, "--via", "wus", "--url", stack.wus_url, *identity, "--json"
            )
            if result.exit_code != 0:
                return False
            entries = json.loads(result.stdout)
            return sum(1 for e in entries if str(e.get("code")) == "400") == recipients

        await wait_for(delivered, timeout=120, what=f"the {via} envelope delivered (400)")

    # the non-repudiation archive (archive volume on /data/archive) holds what was received
    # and answered, and verifies; the operator's commands run in the container
    for via, (kenmerk, _) in kenmerken.items():
        show = stack.compose("exec", "-T", "ingress", "digipoort", "archive", "show", kenmerk,
                             "--json", timeout=120)  # fmt: skip
        assert show.returncode == 0, (via, show.stdout[-2000:], show.stderr[-2000:])
        kinds = {e["kind"] for e in json.loads(show.stdout)["entries"]}
        assert any(k.startswith(via) for k in kinds), (via, kinds)
    verify = stack.compose("exec", "-T", "ingress", "digipoort", "archive", "verify", "--json",
                           timeout=120)  # fmt: skip
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    assert json.loads(verify.stdout)["ok"] is True
    # the Kubernetes CronJob's script (deploy/k8s/archive.yaml) in the image: today is not
    # over, so nothing to close; yesterday saw no traffic here
    manifests = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "archive.yaml").read_text())
    cron = next(d for d in manifests if d and d["kind"] == "CronJob")
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    job = stack.compose("exec", "-T", "ingress", "sh", "-c", script, timeout=120)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
    assert "nothing to close" in job.stdout and "(no traffic)" in job.stdout, job.stdout

    # Prometheus scrapes every gateway container and RabbitMQ
    url = f"http://127.0.0.1:{stack.ports['DIGIPOORT_PROMETHEUS_PORT']}/api/v1/targets"

    async def scraped() -> bool:
        try:
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                targets = (await r.json())["data"]["activeTargets"]
        except (aiohttp.ClientError, KeyError):
            return False
        components = {t["labels"].get("component") for t in targets if t["health"] == "up"}
        return set(GATEWAY_SERVICES) <= components

    await wait_for(scraped, timeout=120, what="Prometheus scraping every gateway service")
    for name in GATEWAY_SERVICES:
        assert stack.inspect(name).get("Restarting") is False
    ingress_log = stack.compose("logs", "--no-color", "ingress", timeout=120).stdout
    assert "worker process died" not in ingress_log  # FTP in one of its two processes

    # SIGTERM: every gateway drains and exits 0
    stop = await asyncio.to_thread(_timed, stack, "compose stop", lambda: stack.compose("stop"))
    assert stop.returncode == 0, stop.stderr
    for name in GATEWAY_SERVICES:
        assert stack.inspect(name).get("ExitCode") == 0, name
