"""Operations: metrics named by the dashboard and the alerts exist, readiness follows the
broker, the collector's gauges, and the deploy/ manifests pass their checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jsonschema
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from digipoort import broker as broker_mod
from digipoort import opsmetrics, provision
from digipoort.app import Gateway, plugin_components
from digipoort.config import BrokerConfig
from tests.support import MGMT, Env, aanlevering, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "digipoort.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "compose.yaml"

# Defined by the push-delivery component (routing/afleveren/deliverer.py); only required on /metrics
# once that component is installed.
PUSH_METRICS = {"digipoort_delivery_retries_total", "digipoort_circuit_breaker_open"}
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:.])digipoort_[a-z0-9_]+")


# --------------------------------------------------------------------------- helpers


def dashboard_expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))

    walk(dash["panels"])
    return exprs


def alert_expressions() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [str(r["expr"]) for g in doc["groups"] for r in g["rules"]]


def referenced_metrics(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC_NAME.findall(e)}


def exposed_names(text: str) -> set[str]:
    """Every series name a PromQL expression may use for the exposed families: the family
    name plus its sample names (``_total``, ``_bucket``/``_sum``/``_count``, ...), also for
    families that have no samples yet (labelled metrics never observed)."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


async def http_get(url: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp,
    ):
        return resp.status, await resp.text()


def test_metric_name_extraction() -> None:
    exprs = [
        "histogram_quantile(0.99, sum by (le) (rate(digipoort_accept_latency_seconds_bucket[5m])))",
        'max(digipoort_queue_messages{queue="digipoort.dead"}) > 0',
        "sum(rate(digipoort_intake_total[5m]))",
    ]
    assert referenced_metrics(exprs) == {
        "digipoort_accept_latency_seconds_bucket",
        "digipoort_queue_messages",
        "digipoort_intake_total",
    }
    text = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n# HELP h x\n# TYPE h histogram\n"
    assert {"a", "a_total", "h_bucket", "h_sum", "h_count"} <= exposed_names(text)


# --------------------------------------------------------------------------- metrics


async def test_dashboard_and_alert_metrics_exist(env: Env) -> None:
    gw = await env.start_gateway()
    assert gw.intake is not None
    receipt = await gw.intake.aanleveren(aanlevering())
    await env.wait_status(receipt.kenmerk, "400")
    await opsmetrics.OpsCollector(env.settings).collect_once()
    status, text = await http_get(f"http://127.0.0.1:{env.settings.http.port}/metrics")
    assert status == 200
    exposed = exposed_names(text)
    wanted = referenced_metrics(dashboard_expressions()) | referenced_metrics(alert_expressions())
    assert len(wanted) > 20
    if "deliverer" not in plugin_components():
        wanted -= PUSH_METRICS
    missing = sorted(wanted - exposed)
    assert not missing, f"named in deploy/ but not on /metrics: {missing}"
    # the operational gauges carry figures after a run
    assert 'digipoort_queue_messages{queue="digipoort.validate"}' in text
    assert 'digipoort_db_pool_connections{state="max"}' in text
    assert 'kind="gateway"' in text and 'kind="crl"' in text and 'kind="anchor"' in text


async def test_collector_gauges(env: Env) -> None:
    gw = await env.start_gateway(components=("intake", "validator"))
    assert gw.pool is not None
    collector = opsmetrics.OpsCollector(env.settings)
    get = REGISTRY.get_sample_value

    async def consumer_seen() -> bool:  # the management API's figures lag a few seconds
        await collector.collect_once()
        return (get("digipoort_queue_consumers", {"queue": "digipoort.validate"}) or 0) >= 1

    await wait_for(consumer_seen, timeout=30, what="the validator's consumer")
    assert get("digipoort_queue_messages", {"queue": "digipoort.validate"}) == 0
    opsmetrics.sample_pool(gw.pool)
    assert get("digipoort_db_pool_connections", {"state": "max"}) == env.settings.database.pool_max
    dates = opsmetrics.expiry_dates(env.settings)
    kinds = {kind for _, kind in dates}
    assert {"gateway", "anchor", "crl"} <= kinds
    for (subject, kind), _when in dates.items():
        value = get("digipoort_certificate_expiry_seconds", {"subject": subject, "kind": kind})
        assert value is not None and value > 0
    # a queue that disappears is removed from the gauges
    collector.queues.update({"digipoort.validate": (3, 1)})
    assert get("digipoort_queue_messages", {"queue": "digipoort.route"}) is None
    assert get("digipoort_queue_messages", {"queue": "digipoort.validate"}) == 3


async def test_collector_survives_unreachable_management(env: Env) -> None:
    settings = env.settings.model_copy(deep=True)
    settings.broker.management_url = f"http://guest:guest@127.0.0.1:{free_port()}"
    before = REGISTRY.get_sample_value("digipoort_queue_scrape_errors_total") or 0
    await opsmetrics.OpsCollector(settings).collect_once()
    assert REGISTRY.get_sample_value("digipoort_queue_scrape_errors_total") == before + 1


# --------------------------------------------------------------------------- readiness


@pytest.mark.parametrize("down", ["broker", "database"])
async def test_readyz_not_ready_without_dependency(env: Env, down: str) -> None:
    settings = env.settings.model_copy(deep=True)
    if down == "broker":
        settings.broker.url = f"amqp://guest:guest@127.0.0.1:{free_port()}/{env.name}"
    else:
        settings.database.url = f"postgresql://postgres@127.0.0.1:{free_port()}/{env.name}"
    gw = Gateway(settings, components=("intake",))
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the connect error
            await gw.start()
        status, body = await http_get(f"http://127.0.0.1:{settings.http.port}/readyz")
        assert status == 503
        checks = json.loads(body)
        assert checks[down] is False and checks["topology"] is False
        assert checks["ready"] is False
        status, _ = await http_get(f"http://127.0.0.1:{settings.http.port}/healthz")
        assert status == 200
    finally:
        await gw.stop()


async def test_readyz_follows_broker_connection(env: Env) -> None:
    await env.start_gateway(components=("intake",))
    url = f"http://127.0.0.1:{env.settings.http.port}/readyz"
    assert (await http_get(url))[0] == 200
    mgmt = provision.Management(MGMT)

    async def connections() -> list[str]:
        result = await mgmt.request("GET", f"/vhosts/{quote(env.name, safe='')}/connections")
        assert isinstance(result, list)
        return [str(c["name"]) for c in result]

    names = await wait_for(connections, what="the gateway's AMQP connection")
    for name in names:
        await mgmt.request("DELETE", f"/connections/{quote(name, safe='')}")

    async def status_is(code: int) -> bool:
        return (await http_get(url))[0] == code

    await wait_for(lambda: status_is(503), timeout=5, what="/readyz 503 after the drop")
    body = json.loads((await http_get(url))[1])
    assert body["broker"] is False and body["database"] is True
    await wait_for(lambda: status_is(200), timeout=60, what="/readyz 200 after reconnect")


# --------------------------------------------------------------------------- deploy/


def test_promtool_check_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [
            promtool,
            "check",
            "config",
            "--syntax-only",
            str(DEPLOY / "prometheus" / "prometheus.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_required_conditions() -> None:
    names = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    for required in (
        "DigipoortNoDeliveryProgress",
        "DigipoortDeadLettersGrowing",
        "DigipoortIntakeErrorRatio",
        "DigipoortCertificateExpiring",
        "DigipoortCrlExpiring",
    ):
        assert required in names


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path, doc))
    return docs


def test_k8s_manifests_pass_schema_check() -> None:
    """Built-in kinds against the Kubernetes JSON schemas bundled by kubernetes-validate
    (strict: unknown fields are errors); KEDA's CRDs against the vendored subset schema."""
    import kubernetes_validate

    keda_schema = json.loads((K8S / "schemas" / "keda.json").read_text())
    kinds: set[str] = set()
    for path, doc in k8s_documents():
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(doc, keda_schema)
            continue
        try:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {exc}"
            ) from None
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "Secret",
    } <= kinds
    deployments = [d for _, d in k8s_documents() if d["kind"] == "Deployment"]
    for d in deployments:
        container = d["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_compose_file_validates() -> None:
    """``docker compose config`` (or docker-compose) validates the file against the
    Compose schema; the structural checks below run everywhere."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    # one `stages` service since issue 15 (it replaced the validator and router services)
    for name in ("rabbitmq", "postgres", "ingress", "stages", "ops", "prometheus"):
        assert name in services
    known = {"intake", "sweeper", *plugin_components(), "deliverer"}
    for name, svc in services.items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and "--components" in cmd:
            components = cmd[cmd.index("--components") + 1].split(",")
            assert set(components) <= known, (name, components)
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), (name, source)

    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]) is None:
            continue
        probe = subprocess.run([*cli, "version"], capture_output=True, check=False)
        if probe.returncode != 0:
            continue
        result = subprocess.run(
            [*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return
    pytest.skip("neither `docker compose` nor docker-compose is installed; structure checked")


def test_rabbitmq_definitions_match_the_declared_topology() -> None:
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    queues = {q["name"]: q["arguments"] for q in definitions["queues"]}
    work_args = broker_mod._work_queue_args(BrokerConfig().delivery_limit)
    for name in (*broker_mod.WORK_QUEUES.values(), broker_mod.STATUS_QUEUE):
        assert queues[name] == work_args, name
    for name in (broker_mod.DEAD_QUEUE, broker_mod.DEAD_HISTORY_QUEUE):
        assert queues[name] == {"x-queue-type": "quorum"}
    policies = {p["name"]: p["definition"] for p in definitions["policies"]}
    assert policies["digipoort-work"]["dead-letter-strategy"] == "at-least-once"
    assert policies["digipoort-work"]["overflow"] == "reject-publish"
    assert policies["digipoort-aflever"]["overflow"] == "reject-publish"
    exchanges = {e["name"] for e in definitions["exchanges"]}
    assert {
        broker_mod.WORK_EXCHANGE,
        broker_mod.AFLEVER_EXCHANGE,
        broker_mod.DEAD_EXCHANGE,
        broker_mod.STATUS_EXCHANGE,
    } <= exchanges


def test_loadtest_cli_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--koppelvlak" in result.stdout and "--rate" in result.stdout


def test_loadtest_mix_loses_nothing() -> None:
    """A short open-model run over WUS, SMTP and FTP against a local gateway (separate
    processes): every accepted envelope reaches every recipient exactly once."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.run",
            "--koppelvlak",
            "mix",
            "--rate",
            "6",
            "--duration",
            "2",
            "--processes",
            "1",
            "--drain-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "RESULT: OK" in result.stdout
    assert "missing_400 0, duplicate_400 0, missing_in_queue 0, duplicate_in_queue 0" in (
        result.stdout
    )
