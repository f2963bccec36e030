"""The ``deliverer`` component: push delivery with durable retries, one
:class:`~routing.afleveren.channel.Channel` per push channel: ``wus`` (the recipient's
AfleverService, :mod:`routing.afleveren.wus`) and ``smtp`` (relay to the recipient's MTA,
:mod:`routing.afleveren.smtp`). Adding a channel: a module here implementing ``Channel``,
its name in :data:`~routing.afleveren.deliverer.PUSH_CHANNELS`, and one line below."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from digipoort import archive
from digipoort.app import Gateway
from digipoort.pki.wiring import PeerCheck, client_context, participant_verifier, revocation_service
from routing.afleveren.channel import Channel
from routing.afleveren.deliverer import Deliverer
from routing.afleveren.smtp import SmtpRelay
from routing.afleveren.wus import AfleverClient

#: The deliverer also wakes on NOTIFY and at the next due time; this bounds the rest
#: (e.g. a circuit breaker turning half-open).
DELIVERER_POLL_SECONDS = 1.0


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    s = gateway.settings
    assert gateway.pool and gateway.registry and gateway.store
    revocation = revocation_service(s)
    await revocation.start()
    outbound = client_context(s)
    client = AfleverClient(
        s.resolve(s.pki.cert_file),
        s.resolve(s.pki.key_file),
        s.resolve(s.pki.ca_file),
        # the recipients' receipt signers are verified as the WUS port verifies participants
        participant_verifier(s, port="wus"),
        timeout=s.aflever.timeout_seconds,
        ssl_context=outbound,
        peer_check=PeerCheck(s),
        archive=archive.recorder(s),
    )
    relay = SmtpRelay(
        s.resolve(s.pki.cert_file),
        s.resolve(s.pki.key_file),
        s.resolve(s.pki.ca_file),
        sender=f"{s.gateway_oin}@{s.smtp.domain}",
        domain=s.smtp.domain,
        timeout=s.aflever.timeout_seconds,
        ssl_context=outbound,
        peer_check=PeerCheck(s),
        archive=archive.recorder(s),
    )
    channels: dict[str, Channel] = {"wus": client, "smtp": relay}
    deliverer = Deliverer(
        gateway.pool,
        gateway.store,
        gateway.registry,
        {name: channel.deliver for name, channel in channels.items()},
        s,
        poll_interval=DELIVERER_POLL_SECONDS,
    )
    await deliverer.start()

    async def stop() -> None:
        await deliverer.stop()
        await client.close()
        await revocation.stop()

    return stop
