"""Import direction (issue 17 items 1 and 2): digipoort/app.py imports opsmetrics, never the
other way round — opsmetrics takes what it needs (settings, pool) as arguments."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def test_opsmetrics_does_not_import_the_app() -> None:
    code = "import sys, digipoort.opsmetrics; print('digipoort.app' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- layers
# issue 17 item 1: digipoort/ is the ground; routing/ (with afleveren in routing/afleveren/)
# stands on it; adapters/ (the ingress koppelvlakken) on top. Every import statement counts,
# also one inside a function.

ROOT = Path(__file__).resolve().parent.parent

#: routing/ modules that still use protocol code living in adapters/ today: the SMTP
#: subject convention (it raises the SMTP adapter's MailRefused). The WUS protocol code
#: (SOAP envelope, WS-Security) moved to digipoort/wus/. Nothing may be added here.
ALLOWED_ROUTING_TO_ADAPTERS = {
    ("routing/afleveren/smtp.py", "adapters.smtp.subject"),
}


def _imports(package: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in sorted((ROOT / package).rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), name)):
            if isinstance(node, ast.Import):
                found.update((name, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add((name, node.module))
    return found


def _into(imports: set[tuple[str, str]], *packages: str) -> set[tuple[str, str]]:
    return {(f, m) for f, m in imports if any(m == p or m.startswith(p + ".") for p in packages)}


def test_the_ground_imports_no_layer_above_it() -> None:
    assert _into(_imports("digipoort"), "routing", "validators", "adapters", "portal") == set()


def test_routing_never_imports_adapters() -> None:
    assert _into(_imports("routing"), "adapters") == ALLOWED_ROUTING_TO_ADAPTERS


def test_afleveren_has_one_room() -> None:
    """The deliverer, its schedule and the outbound channels live in routing/afleveren/;
    adapters/ keeps no outbound channel."""
    room = {p.name for p in (ROOT / "routing" / "afleveren").glob("*.py")}
    assert {"schedule.py", "deliverer.py", "channel.py", "wus.py", "smtp.py", "ftp.py"} <= room
    assert {"component.py"} <= room
    for gone in (
        "adapters/wus/aflever_client.py",
        "adapters/smtp/relay.py",
        "adapters/ftp/outbox.py",
        "routing/deliverer.py",
        "routing/delivery_schedule.py",
    ):
        assert not (ROOT / gone).exists(), gone


def test_every_push_channel_is_a_channel() -> None:
    from routing.afleveren.channel import Channel
    from routing.afleveren.deliverer import PUSH_CHANNELS
    from routing.afleveren.smtp import SmtpRelay
    from routing.afleveren.wus import AfleverClient

    implementations = {"wus": AfleverClient, "smtp": SmtpRelay}
    assert set(implementations) == set(PUSH_CHANNELS)
    for cls in implementations.values():
        assert callable(getattr(cls, "deliver", None))
        assert issubclass(cls, Channel)
