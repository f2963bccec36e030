"""deploy/: what the manifests promise beyond their schemas (tests/test_ops.py checks those):
the stages scale with KEDA on the queues the gateway declares, every pod waits for the
setup Job and the wait script works against a real database, compose runs setup first and
FTP in one process, and the image's build context holds no keys."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from digipoort import broker as broker_mod
from digipoort.provision import Management
from tests.cli_support import cli
from tests.servers import (  # noqa: F401 - fixtures
    OwnServers,
    own_env_fixture,
    servers_available,
    servers_fixture,
)
from tests.support import AMQP, MGMT, PG_ADMIN, Env

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose"


def k8s(kind: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return [d for d in docs if d["kind"] == kind]


def by_name(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s(kind)}


# -- Kubernetes ------------------------------------------------------------------------------
def test_stages_scale_with_keda_on_the_declared_work_queues() -> None:
    deployments = by_name("Deployment")
    scaled = by_name("ScaledObject")
    assert set(scaled) == {"digipoort-stages"}
    target = scaled["digipoort-stages"]["spec"]["scaleTargetRef"]["name"]
    assert target in deployments
    queues = {t["metadata"]["queueName"] for t in scaled["digipoort-stages"]["spec"]["triggers"]}
    assert queues == set(broker_mod.WORK_QUEUES.values())
    auth = by_name("TriggerAuthentication")
    for trigger in scaled["digipoort-stages"]["spec"]["triggers"]:
        assert trigger["type"] == "rabbitmq"
        assert trigger["authenticationRef"]["name"] in auth
    # the stages Deployment runs the components that consume those queues
    args = deployments[target]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert set(args[args.index("--components") + 1].split(",")) == {"validator", "router"}
    # nothing else autoscales them: an HPA on the same Deployment would fight KEDA's
    for hpa in k8s("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] != target
        assert all(m["type"] != "External" for m in hpa["spec"]["metrics"])


def test_every_deployment_waits_for_the_setup_job() -> None:
    job = by_name("Job")["digipoort-setup"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["setup"]
    script = by_name("ConfigMap")["digipoort-wait-for-setup"]["data"]["wait_for_setup.py"]
    assert "migration_files" in script
    deployments = by_name("Deployment")
    for name, d in deployments.items():
        spec = d["spec"]["template"]["spec"]
        init = {c["name"]: c for c in spec.get("initContainers", [])}
        assert "wait-for-setup" in init, name
        assert init["wait-for-setup"]["image"] == spec["containers"][0]["image"], name
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["wait-for-setup"]["configMap"]["name"] == "digipoort-wait-for-setup"
    # the image of the Job is the image of the Deployments (one release)
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deployments.values()}
    assert images == {job["spec"]["template"]["spec"]["containers"][0]["image"]}
    # every referenced Secret and ConfigMap is in the manifests
    secrets, maps = set(by_name("Secret")), set(by_name("ConfigMap"))
    for d in [*deployments.values(), job]:
        spec = d["spec"]["template"]["spec"]
        for c in [*spec["containers"], *spec.get("initContainers", [])]:
            for ref in c.get("envFrom", []):
                if "secretRef" in ref:
                    assert ref["secretRef"]["name"] in secrets
                else:
                    assert ref["configMapRef"]["name"] in maps
            for e in c.get("env", []):
                if "valueFrom" in e:
                    assert e["valueFrom"]["secretKeyRef"]["name"] in secrets
        for v in spec["volumes"]:
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets
            if "configMap" in v:
                assert v["configMap"]["name"] in maps


def test_pdbs_select_existing_deployments() -> None:
    components = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for d in k8s("Deployment")
    }
    for pdb in k8s("PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] in components


def _wait_script(tmp_path: Path) -> Path:
    script = by_name("ConfigMap")["digipoort-wait-for-setup"]["data"]["wait_for_setup.py"]
    path = tmp_path / "wait_for_setup.py"
    path.write_text(script, encoding="utf-8")
    return path


def _run_wait(script: Path, url: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DIGIPOORT_DATABASE__URL": url, "WAIT_SECONDS": "2",
               "WAIT_INTERVAL": "0.2"}  # fmt: skip
    return subprocess.run(
        [sys.executable, str(script)], env=environ, capture_output=True, text=True, timeout=120
    )


async def test_wait_for_setup_script_against_a_real_database(env: Env, tmp_path: Path) -> None:
    """The initContainer's script: done on a migrated database; on a database without the
    migrations (and on one that is not reachable) it waits, then fails with the reason."""
    script = _wait_script(tmp_path)
    done = await asyncio.to_thread(_run_wait, script, env.db_url)
    assert done.returncode == 0, done.stderr
    assert "all migrations applied" in done.stdout

    empty = f"dptest_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG_ADMIN}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{empty}"')
        fresh = await asyncio.to_thread(_run_wait, script, f"{PG_ADMIN}/{empty}")
        conn = await asyncpg.connect(f"{PG_ADMIN}/{empty}")
        try:  # one migration short of the image's
            await conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY)")
            await conn.execute("INSERT INTO schema_migrations VALUES ('001_core.sql')")
        finally:
            await conn.close()
        partial = await asyncio.to_thread(_run_wait, script, f"{PG_ADMIN}/{empty}")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{empty}" WITH (FORCE)')
        await admin.close()
    assert fresh.returncode == 1 and "database not migrated" in fresh.stderr, fresh
    assert partial.returncode == 1 and "migrations pending:" in partial.stderr, partial
    gone = await asyncio.to_thread(_run_wait, script, "postgresql://nobody@127.0.0.1:9/x")
    assert gone.returncode == 1 and "database not reachable" in gone.stderr, gone


# -- setup ---------------------------------------------------------------------------------
async def test_setup_grants_the_vhost_to_the_gateways_own_user(env: Env) -> None:
    """In compose and Kubernetes the gateway's AMQP user is not guest (the definitions have
    no guest): `digipoort setup` gives the vhost to the user of broker.url. Before, it
    granted guest and failed where guest does not exist (the compose stack's setup)."""
    mgmt = Management(MGMT)
    user = f"dptest_user_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    await mgmt.request("PUT", f"/users/{user}", {"password": password, "tags": ""})
    try:
        host = AMQP.split("@", 1)[1]
        result = await cli(
            "setup", "--config", str(env.config_path),
            env={"DIGIPOORT_BROKER__URL": f"amqp://{user}:{password}@{host}/{env.name}"},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        permissions = await mgmt.request("GET", f"/permissions/{env.name}/{user}")
        assert isinstance(permissions, dict) and permissions["configure"] == ".*"
    finally:
        await mgmt.request("DELETE", f"/users/{user}")


# -- stopping --------------------------------------------------------------------------------
@pytest.mark.skipif(not servers_available(), reason="needs rabbitmq-server and initdb/pg_ctl")
@pytest.mark.slow
async def test_every_role_stops_during_a_broker_outage(servers: OwnServers, own_env: Env) -> None:
    """`docker stop` / a pod's termination while RabbitMQ is gone: each role's components
    stop within the grace period (before, deadletters and statusreports waited for the
    broker forever and were SIGKILLed after 60 s — seen in the compose stack)."""
    roles = {
        "stages": ("validator", "router"),
        "ops": ("retention", "deadletters", "statusreports", "opsmetrics"),
        "deliverer": ("deliverer",),
    }
    gateways = {
        role: await own_env.start_gateway(components=names, serve_http=False)
        for role, names in roles.items()
    }
    await servers.rabbit.stop()
    try:
        for role, gateway in gateways.items():
            try:
                async with asyncio.timeout(30):  # the grace period is 60 s
                    await gateway.stop()
                own_env.gateways.remove(gateway)
            except TimeoutError:
                pytest.fail(f"the {role} role did not stop within 30 s of SIGTERM")
    finally:
        await servers.rabbit.start()


# -- compose ---------------------------------------------------------------------------------
def test_compose_gateways_wait_for_setup_and_ftp_has_one_process() -> None:
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    setup = services["setup"]
    assert setup["restart"] == "no"
    assert setup["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert setup["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    for name, svc in services.items():
        if svc.get("image") == "digipoort:latest" and name != "setup":
            assert svc["depends_on"]["setup"]["condition"] == "service_completed_successfully"
            # and stopped before the broker and the database (shutdown follows depends_on)
            assert {"rabbitmq", "postgres"} <= set(svc["depends_on"]), name
    cmd = services["ingress"]["command"]
    assert "ftp" in cmd[cmd.index("--components") + 1].split(",")
    # FTP in one of the processes (digipoort/supervisor.py): --processes is safe with it
    assert int(cmd[cmd.index("--processes") + 1]) >= 2
    env = services["ingress"]["environment"]
    assert "DIGIPOORT_FTP__PASSIVE_PORT_MIN" in env and "DIGIPOORT_FTP__PASSIVE_PORT_MAX" in env


def test_compose_local_override_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", "compose.yaml", "-f", "compose.local.yaml", "config"],
        cwd=COMPOSE, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode == 127 or "not found" in result.stderr:
        return  # structure only (below)
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)
    assert merged["services"]["postgres"]["image"].startswith("digipoort-local/")
    assert merged["services"]["ingress"]["build"]["args"]["BASE_IMAGE"]


# -- image -------------------------------------------------------------------------------------
def _context_files() -> set[str]:
    """The files `docker build .` sends (per .dockerignore), listed with git's matcher:
    .dockerignore patterns here are plain enough for it."""
    patterns = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    excluded = [p for p in patterns if p and not p.startswith(("#", "!")) and p != "*"]
    files = set()
    for top in included:
        path = ROOT / top
        paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for p in paths:
            rel = p.relative_to(ROOT)
            if any(rel.match(x.removeprefix("**/").rstrip("/")) for x in excluded) or any(
                part == "__pycache__" for part in rel.parts
            ):
                continue
            files.add(str(rel))
    return files


def test_build_context_has_no_keys_venv_or_git() -> None:
    files = _context_files()
    assert "pyproject.toml" in files and "digipoort/cli.py" in files
    for name in files:
        assert not name.startswith((".venv/", ".git/", ".dev/", "tests/")), name
        assert not name.endswith((".key", ".pem", ".p12")), name
    size = sum((ROOT / f).stat().st_size for f in files)
    assert size < 20 * 1024 * 1024, size
    # every COPY of the Dockerfile is in the context
    for line in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert any(f == src or f.startswith(src + "/") for f in files), src
