"""deploy/: what the manifests promise beyond their schemas (tests/test_ops.py checks those):
the stages scale with KEDA on the queues the gateway declares, every pod waits for the
setup Job and the wait script works against a real database, compose runs setup first and
FTP in one process, and the image's build context holds no keys."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
import yaml

from digipoort import broker as broker_mod
from digipoort.archive import writer
from digipoort.archive.days import MANIFEST, segment_files
from digipoort.config import BrokerConfig, load_settings, url_hosts
from digipoort.provision import Management
from tests.cli_support import cli
from tests.servers import (  # noqa: F401 - fixtures
    OwnServers,
    own_env_fixture,
    servers_available,
    servers_fixture,
)
from tests.support import AMQP, MGMT, PG_ADMIN, Env, free_port
from tests.test_archive import _config as _archive_config
from tests.test_archive import _exchange as _archive_exchange

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


def components(deployment: dict[str, Any]) -> set[str]:
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return set(args[args.index("--components") + 1].split(","))


def compose_services() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text(encoding="utf-8"))
    return dict(doc["services"])


def compose_components(svc: dict[str, Any]) -> set[str]:
    cmd = svc.get("command")
    if not isinstance(cmd, list) or "--components" not in cmd:
        return set()
    return set(cmd[cmd.index("--components") + 1].split(","))


#: components that write the non-repudiation archive (digipoort/archive: the koppelvlakken
#: and the push deliverer's receipts)
ARCHIVING = {"wus", "smtp", "ftp", "deliverer"}


def _volume_at(mounts: dict[str, str], path: str) -> str | None:
    """The volume that holds ``path``: the mount with the longest matching mount path."""
    best = max((m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")),
               key=len, default=None)  # fmt: skip
    return mounts[best] if best is not None else None


def k8s_volume_at(spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The pod volume (its definition) that holds ``path`` in ``container``."""
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    name = _volume_at(mounts, path)
    assert name is not None, f"{path} is on the container's own (read-only) file system"
    return dict({v["name"]: v for v in spec["volumes"]}[name])


def compose_volume_at(svc: dict[str, Any], path: str) -> str | None:
    """The named volume holding ``path`` in a compose service (None: the container's
    file system, or a bind mount)."""
    mounts = {}
    for entry in svc.get("volumes", []):
        source, target = entry.split(":")[:2]
        mounts[target] = source
    source = _volume_at(mounts, path)
    return source if source is not None and not source.startswith((".", "/")) else None


def k8s_config_env() -> dict[str, str]:
    return dict(by_name("ConfigMap")["digipoort-config"]["data"])


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
    # the stages Deployment runs the component that consumes those queues: `stages` (issue
    # 15; it consumes digipoort.route too — before, the Deployment ran validator,router)
    assert components(deployments[target]) == {"stages"}
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


def test_archive_payloads_and_exports_are_on_persistent_volumes() -> None:
    """archive.dir, storage.payload_dir and history.export_dir live on PersistentVolumeClaims
    (never the pod's file system or an emptyDir) in every pod that uses them; the archive
    has a claim of its own (write-once evidence with its own backup and retention)."""
    config = k8s_config_env()
    claims = by_name("PersistentVolumeClaim")
    archive_dir = config["DIGIPOORT_ARCHIVE__DIR"]
    payload_dir = config["DIGIPOORT_STORAGE__PAYLOAD_DIR"]
    for name, d in by_name("Deployment").items():
        spec = d["spec"]["template"]["spec"]
        container = spec["containers"][0]
        payloads = k8s_volume_at(spec, container, payload_dir)
        assert payloads["persistentVolumeClaim"]["claimName"] == "digipoort-data", name
        if components(d) & ARCHIVING:
            archive = k8s_volume_at(spec, container, archive_dir)
            assert archive["persistentVolumeClaim"]["claimName"] == "digipoort-archive", name
    assert "ReadWriteMany" in claims["digipoort-archive"]["spec"]["accessModes"]
    assert {"digipoort-data", "digipoort-archive", "digipoort-history-export"} <= set(claims)


def test_exactly_one_role_runs_retention() -> None:
    """`retention` (payload sweep, history partitions and purge) in one role, one replica,
    in compose and in Kubernetes, with history.export_dir on a persistent volume."""
    deployments = [d for d in k8s("Deployment") if "retention" in components(d)]
    assert len(deployments) == 1
    [ops] = deployments
    assert ops["spec"]["replicas"] == 1
    assert not [s for s in k8s("ScaledObject") if s["spec"]["scaleTargetRef"]["name"]
                == ops["metadata"]["name"]]  # fmt: skip
    spec = ops["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    export = k8s_volume_at(spec, container, env["DIGIPOORT_HISTORY__EXPORT_DIR"])
    assert export["persistentVolumeClaim"]["claimName"] == "digipoort-history-export"

    services = compose_services()
    volumes = yaml.safe_load((COMPOSE / "compose.yaml").read_text(encoding="utf-8"))["volumes"]
    running = [n for n, svc in services.items() if "retention" in compose_components(svc)]
    assert running == ["ops"]
    ops_svc = services["ops"]
    assert ops_svc["deploy"]["replicas"] == 1
    export_dir = ops_svc["environment"]["DIGIPOORT_HISTORY__EXPORT_DIR"]
    assert compose_volume_at(ops_svc, export_dir) in volumes
    # payloads (the image's /data/payloads) and the archive on named volumes everywhere
    for name, svc in services.items():
        if not compose_components(svc):
            continue
        assert compose_volume_at(svc, "/data/payloads") == "data", name
        if compose_components(svc) & ARCHIVING:
            assert compose_volume_at(svc, "/data/archive") == "archive", name
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "DIGIPOORT_STORAGE__PAYLOAD_DIR=/data/payloads" in dockerfile
    assert "DIGIPOORT_ARCHIVE__DIR=/data/archive" in dockerfile


def test_k8s_cluster_settings() -> None:
    """The gateway's Secret lists a 3-node RabbitMQ cluster and a multi-host database URL
    that picks the writable host, as the gateway's own settings parse them."""
    env = by_name("Secret")["digipoort-env"]["stringData"]
    assert "DIGIPOORT_BROKER__URL" not in env  # urls wins; one of them only confuses
    broker = BrokerConfig.model_validate({"urls": env["DIGIPOORT_BROKER__URLS"]})
    assert len(broker.urls) == 3 and len({url_hosts(u)[0] for u in broker.urls}) == 3
    assert {u.rsplit("/", 1)[1] for u in broker.urls} == {"digipoort"}
    url = env["DIGIPOORT_DATABASE__URL"]
    assert len(url_hosts(url)) >= 2
    assert parse_qs(urlsplit(url).query)["target_session_attrs"] == ["read-write"]
    # the setup Job's administrator URL must win over the gateways' management URL: a
    # management_urls list in digipoort-env would override it (BrokerConfig)
    assert "DIGIPOORT_BROKER__MANAGEMENT_URLS" not in env
    # compose stays one node of each
    gateway_env = compose_services()["ingress"]["environment"]
    assert "DIGIPOORT_BROKER__URL" in gateway_env and "DIGIPOORT_BROKER__URLS" not in gateway_env


# -- the archive's daily CronJob -----------------------------------------------------------
def test_archive_cronjob_closes_and_verifies_daily() -> None:
    cron = by_name("CronJob")["digipoort-archive-close"]
    assert cron["spec"]["timeZone"] == "Etc/UTC"
    minute, hour, *every = cron["spec"]["schedule"].split()
    assert every == ["*", "*", "*"] and hour == "0" and int(minute) >= 10  # after the grace
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in k8s("Deployment")}
    assert {container["image"]} == images
    script = container["args"][0]
    assert "digipoort archive close" in script and "digipoort archive verify --day" in script
    config = k8s_config_env()
    archive = k8s_volume_at(spec, container, config["DIGIPOORT_ARCHIVE__DIR"])
    assert archive["persistentVolumeClaim"]["claimName"] == "digipoort-archive"
    # it signs the manifest: the gateway key
    pki = k8s_volume_at(spec, container, config["DIGIPOORT_PKI__KEY_FILE"])
    assert pki["secret"]["secretName"] == "digipoort-pki"


def _run_cron_script(cfg: Path, archive_dir: Path) -> subprocess.CompletedProcess[str]:
    cron = by_name("CronJob")["digipoort-archive-close"]
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    environ = {**os.environ, "DIGIPOORT_CONFIG": str(cfg),
               "DIGIPOORT_ARCHIVE__DIR": str(archive_dir),
               "DIGIPOORT_ARCHIVE__CLOSE_GRACE_SECONDS": "0",
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    return subprocess.run(
        ["/bin/sh", "-c", script], env=environ, capture_output=True, text=True, timeout=300
    )


async def test_archive_cronjob_script_for_real(
    tmp_path: Path, pki_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CronJob's script with the real CLI: a quiet day is no failure; yesterday's
    records are sealed and verified; one changed byte fails the Job."""
    cfg = _archive_config(tmp_path, pki_dir)
    settings = load_settings(cfg)
    archive_dir = settings.resolve(settings.archive.dir)
    quiet = await asyncio.to_thread(_run_cron_script, cfg, archive_dir)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "nothing to close" in quiet.stdout and "(no traffic)" in quiet.stdout

    yesterday = datetime.now(UTC) - timedelta(days=1)
    monkeypatch.setattr(writer, "utc_now", lambda: yesterday)
    await _archive_exchange(settings, uuid.uuid4().hex)
    day = yesterday.date().isoformat()
    done = await asyncio.to_thread(_run_cron_script, cfg, archive_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"closed {day}" in done.stdout and f"OK  {day} closed" in done.stdout
    assert (archive_dir / day / MANIFEST).exists()

    [segment] = segment_files(archive_dir / day)
    segment.chmod(0o644)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    damaged = await asyncio.to_thread(_run_cron_script, cfg, archive_dir)
    assert damaged.returncode != 0
    assert f"BAD {day}" in damaged.stdout, damaged.stdout + damaged.stderr



# -- alerts ------------------------------------------------------------------------------------
def test_archive_alert_rules_fire_in_promtool_unit_tests() -> None:
    """deploy/prometheus/alerts_test.yml: each archive alert fires on its failure series
    (write failures, a day that cannot be closed, maintenance, the CronJob) and not
    before/without it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    tests = DEPLOY / "prometheus" / "alerts_test.yml"
    result = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        t["alertname"] for case in yaml.safe_load(tests.read_text())["tests"]
        for t in case["alert_rule_test"]
    }  # fmt: skip
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    [group] = [g for g in doc["groups"] if g["name"] == "digipoort.archive"]
    assert {r["alert"] for r in group["rules"]} <= tested

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
    # the Secret's form: several hosts, the first one dead, the writable one is taken
    user, _, rest = env.db_url.partition("@")
    multi = f"{user}@127.0.0.1:{free_port()},{rest}?target_session_attrs=read-write"
    assert len(url_hosts(multi)) == 2
    failover = await asyncio.to_thread(_run_wait, script, multi)
    assert failover.returncode == 0, failover.stderr
    assert "all migrations applied" in failover.stdout

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
        "stages": ("stages",),
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
