"""The WUS endpoints over HTTPS: aanleverservice and statusinformatieservice 1.2.

Per request, cheapest checks first (docs/wus.md):

1. TLS (in the handshake, before any HTTP): client certificate chained to the trust roots,
   valid, not revoked. Then the TLS certificate is verified again by the
   ``CertificateVerifier`` (intermediates, CRL, OIN) — the caller's OIN.
2. HTTP: POST, not SOAP 1.2, SOAPAction present; the body is read in chunks and refused
   as soon as it passes ``wus.max_request_bytes`` (a declared Content-Length above the
   cap is refused without reading). Large bodies wait for one of a few "large request"
   slots, so memory stays bounded; parsing and verification of any body above 64 KiB run
   in a worker thread, and namespace declarations / attributes are bounded before c14n,
   so no request stalls the event loop (docs/wus-security.md).
3. SOAP 1.1 + WS-Addressing (``soap.parse_envelope``), wsa:Action == SOAPAction, an
   operation of *this* endpoint, wsa:To == this endpoint's public address.
4. WS-Security (``wsverify.verify_envelope``); the BinarySecurityToken's certificate is
   verified like the TLS one and must carry the same OIN; replayed wsa:MessageIDs are
   refused (for aanleveren the wsa:MessageID is recorded by intake, in the statement that
   creates the envelope; a request refused before that records it then, so a replayed
   request is still answered as a replay).
5. The operation. Answers are signed with the gateway's certificate; faults are not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import asyncpg
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from adapters.wus import conformance, messages, store
from adapters.wus.addressing import EndpointAddresses
from adapters.wus.codes import FAULT_NUMBERS, Kind, Refusal
from adapters.wus.ophaal import OPERATIONS as OPHAAL_OPERATIONS
from adapters.wus.ophaal import Ophaalservice
from adapters.wus.response_signing import ResponseSigner
from adapters.wus.wsdl import SERVICES, XSD_NAME, Service, render_wsdl, xsd
from adapters.wus.zetstatus import EXTRA_OPERATIONS, ZET_STATUS, zet_status
from digipoort import archive, metrics
from digipoort.config import Settings
from digipoort.envelope import Aanlevering, new_kenmerk
from digipoort.intake import Intake, IntakeRefused, IntakeUnavailable
from digipoort.outages import is_outage
from digipoort.payloads import PayloadStore
from digipoort.pki import CertificateRejected, CertificateVerifier, peer_certificate
from digipoort.registry import Weigering
from digipoort.registry_store import RegistryHolder
from digipoort.status import now
from digipoort.wus.soap import (
    ParsedEnvelope,
    SoapError,
    WusOperation,
    build_fault,
    operation_for_action,
    parse_envelope,
)
from digipoort.wus.wsprofile import WSSecurityError
from digipoort.wus.wsverify import VerifiedSecurity, verify_envelope

log = structlog.get_logger(__name__)

#: Bodies above this are read only while holding one of LARGE_SLOTS.
LARGE_BODY: Final = 1024 * 1024
#: Bodies above this are parsed and their signature verified in a worker thread: below it
#: parsing + c14n + verification cost a few milliseconds (namespaces and attributes are
#: bounded by the parser), above it they could hold the event loop too long.
OFF_LOOP_BODY: Final = 64 * 1024
LARGE_SLOTS: Final = 4
#: Status requests are tiny: their endpoint takes at most this much.
STATUS_MAX_REQUEST: Final = 1024 * 1024
#: A client must deliver its whole request within this time.
READ_TIMEOUT: Final = 120.0
_CHUNK: Final = 256 * 1024

_TIMESTAMP_CODES: Final = frozenset(
    {
        "missing_timestamp",
        "multiple_timestamps",
        "bad_timestamp",
        "timestamp_expired",
        "timestamp_in_future",
    }
)
_INTAKE_KINDS: Final[dict[str, Kind]] = {
    Weigering.BERICHTSOORT_ONBEKEND.value: "berichtsoort",
    Weigering.KOPPELVLAK_NIET_TOEGESTAAN.value: "berichtsoort",
    Weigering.AFZENDER_ONBEKEND.value: "authentication",
    Weigering.AFZENDER_NIET_GEAUTORISEERD.value: "authorisation",
    Weigering.ONTVANGER_NIET_TOEGESTAAN.value: "authorisation",
    IntakeRefused.TE_GROOT: "too_large",
    IntakeRefused.TE_VEEL_BIJLAGEN: "too_large",
}


@dataclass
class _Seen:
    """What is known of a request so far (for the fault's Action and RelatesTo)."""

    operation: WusOperation | None = None
    message_id: str | None = None
    large_slot: bool = False  # holds one of LARGE_SLOTS (released when the answer is ready)
    # aanleveren: the wsa:MessageID still to be recorded (intake records it with the
    # envelope; a request refused before that records it on the refusal path)
    replay_deferred: tuple[str, str] | None = None


@dataclass(frozen=True)
class Caller:
    oin: str
    parsed: ParsedEnvelope
    operation: WusOperation
    security: VerifiedSecurity
    seen: _Seen


class WusService:
    """The request pipeline, shared by both endpoints."""

    def __init__(
        self,
        settings: Settings,
        *,
        pool: asyncpg.Pool,
        registry: RegistryHolder,
        intake: Intake | None,
        verifier: CertificateVerifier,
        signing_key: rsa.RSAPrivateKey,
        signing_cert: x509.Certificate,
        conformance_mode: bool = True,
        payloads: PayloadStore | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.registry = registry
        self.intake = intake
        self.verifier = verifier
        self.signing_key = signing_key
        self.signing_cert = signing_cert
        self.signer = ResponseSigner(signing_key, signing_cert)
        self.conformance_mode = conformance_mode
        self.public_url = settings.wus.public_url.rstrip("/")
        self.addresses = EndpointAddresses(self.public_url, settings.wus.accepted_urls)
        self.max_request_bytes = settings.wus.max_request_bytes
        self.skew = timedelta(seconds=settings.wus.max_clock_skew_seconds)
        self._large = asyncio.Semaphore(LARGE_SLOTS)
        self.ophaal = Ophaalservice(pool, payloads, settings) if payloads is not None else None
        self.archive = archive.recorder(settings)  # docs/archive.md

    # ------------------------------------------------------------------ aiohttp

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.max_request_bytes)
        for path in SERVICES:
            app.router.add_get(path, self.get)
            app.router.add_post(path, self.post)
        return app

    async def get(self, request: web.Request) -> web.Response:
        service = SERVICES[request.path]
        if "wsdl" in request.query or "WSDL" in request.query:
            return web.Response(
                body=render_wsdl(service, self.public_url), content_type="text/xml", charset="utf-8"
            )
        if request.query.get("xsd") == XSD_NAME:
            return web.Response(body=xsd(), content_type="text/xml", charset="utf-8")
        raise web.HTTPNotFound(text="use ?wsdl\n")  # logged and counted by the HTTP guard

    async def post(self, request: web.Request) -> web.StreamResponse:
        service = SERVICES[request.path]
        started = time.perf_counter()
        seen = _Seen()
        bound = log.bind(endpoint=service.name)
        archived = self.archive.exchange("wus", transport=request.transport)
        try:
            tls_oin = self._tls_oin(request)
            bound = bound.bind(sender_oin=tls_oin)
            limit = (
                self.max_request_bytes
                if service.name == "aanleverservice"
                else min(self.max_request_bytes, STATUS_MAX_REQUEST)
            )
            body = await self._read_body(request, limit, seen)
            caller = await self._authenticate(request, service, body, tls_oin, seen)
            bound = bound.bind(operation=caller.operation.name)
            if not await archived.received(
                "wus.request", body, oin=tls_oin, operation=caller.operation.name
            ):  # fail-closed: nothing is accepted that is not archived (docs/archive.md)
                raise Refusal("technical", "archive_unavailable", public=False)
            answer = await self._dispatch(caller, bound)
            response_xml = self._signed_response(caller, answer)
            kenmerk = answer.findtext(f"{messages.KV}kenmerk")
            if not await archived.answered("wus.response", response_xml, kenmerk=kenmerk):
                raise Refusal("technical", "archive_unavailable", public=False)
        except Refusal as refusal:
            refusal = await self._replay_or(refusal, seen)
            fault = self._fault(service, seen, refusal, started, bound)
            body_out = fault.body if isinstance(fault.body, bytes) else b""
            await archived.answered("wus.fault", body_out, reden=refusal.reason)
            return fault
        except Exception as exc:  # pragma: no cover - defensive: never a stack trace out
            bound.error("wus.internal_error", error=repr(exc))
            internal = Refusal("technical", "internal_error", public=False)
            return self._fault(service, seen, internal, started, bound)
        finally:
            if seen.large_slot:  # held from reading through parsing, verification, intake
                self._large.release()
        metrics.WUS_REQUESTS.labels(caller.operation.name, "ok", "").inc()
        metrics.WUS_LATENCY.labels(caller.operation.name).observe(time.perf_counter() - started)
        return web.Response(body=response_xml, content_type="text/xml", charset="utf-8")

    # ------------------------------------------------------------------ steps

    def _tls_oin(self, request: web.Request) -> str:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        cert = peer_certificate(ssl_object) if ssl_object is not None else None
        if cert is None:  # unreachable with CERT_REQUIRED; kept as a guard
            raise Refusal("authentication", "no_client_certificate", public=False)
        try:
            return self.verifier.verify(cert).oin
        except CertificateRejected as rejected:
            raise Refusal("authentication", f"tls_{rejected.reason}", public=False) from None

    async def _read_body(self, request: web.Request, limit: int, seen: _Seen) -> bytes:
        content_type = request.headers.get("Content-Type", "")
        if "application/soap+xml" in content_type.lower():
            raise Refusal("malformed", "soap12", "alleen SOAP 1.1 wordt ondersteund")
        declared = request.content_length
        if declared is not None and declared > limit:
            raise Refusal("too_large", "content_length", f"maximaal {limit} bytes")
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                return await self._read_capped(request, limit, seen)
        except TimeoutError:
            raise Refusal(
                "malformed", "read_timeout", "het verzoek kwam te langzaam binnen"
            ) from None

    async def _read_capped(self, request: web.Request, limit: int, seen: _Seen) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise Refusal("too_large", "body_size", f"maximaal {limit} bytes")
            if size > LARGE_BODY and not seen.large_slot:
                await self._large.acquire()
                seen.large_slot = True
            chunks.append(chunk)

    async def _authenticate(
        self, request: web.Request, service: Service, body: bytes, tls_oin: str, seen: _Seen
    ) -> Caller:
        soap_action = request.headers.get("SOAPAction")
        if soap_action is None:
            raise Refusal("malformed", "missing_soapaction", "HTTP header SOAPAction ontbreekt")
        soap_action = soap_action.strip().strip('"')
        allow_huge = service.name == "aanleverservice"

        def work() -> tuple[ParsedEnvelope, WusOperation, VerifiedSecurity]:
            parsed = self._parse(body, allow_huge)
            seen.message_id = parsed.message_id
            operation = self._operation(parsed, service, soap_action, seen)
            return parsed, operation, self._verify_signature(parsed)

        if len(body) > OFF_LOOP_BODY:
            parsed, operation, security = await asyncio.to_thread(work)
        else:
            parsed, operation, security = work()
        try:
            signer = self.verifier.verify(security.certificate)
        except CertificateRejected as rejected:
            raise Refusal("authentication", f"bst_{rejected.reason}", public=False) from None
        if signer.oin != tls_oin:
            raise Refusal(
                "authentication",
                "bst_oin_mismatch",
                "het OIN van het ondertekeningscertificaat verschilt van dat van de TLS-verbinding",
            )
        seen.replay_deferred = (tls_oin, parsed.message_id)
        if operation.name != "aanleveren" or self.intake is None:
            await self._check_replay(seen)
        return Caller(tls_oin, parsed, operation, security, seen)

    async def _check_replay(self, seen: _Seen) -> None:
        """Record the request's wsa:MessageID on its own; a replay is refused."""
        if seen.replay_deferred is None:
            return
        oin, message_id = seen.replay_deferred
        seen.replay_deferred = None
        try:
            fresh = await store.remember_message_id(self.pool, oin, message_id)
        except Exception as exc:  # a database outage is a database failure, not ours
            if not is_outage(exc):
                raise
            raise Refusal("technical", "database_unavailable", public=False) from exc
        if not fresh:
            raise Refusal("timestamp", "replayed_message_id", public=False)

    async def _replay_or(self, refusal: Refusal, seen: _Seen) -> Refusal:
        """An aanleveren refused before intake recorded its wsa:MessageID: record it now,
        and answer a replay as a replay (as if checked first). A technical refusal records
        nothing: the client may send the same request again."""
        if seen.replay_deferred is None or refusal.kind == "technical":
            return refusal
        try:
            await self._check_replay(seen)
        except Refusal as replay:
            return replay if replay.reason == "replayed_message_id" else refusal
        return refusal

    def _parse(self, body: bytes, allow_huge: bool) -> ParsedEnvelope:
        try:
            return parse_envelope(
                body,
                max_depth=self.settings.limits.max_xml_depth,
                allow_huge_text=allow_huge,
            )
        except SoapError as exc:
            raise Refusal("malformed", exc.code, exc.code) from None

    def _operation(
        self, parsed: ParsedEnvelope, service: Service, soap_action: str, seen: _Seen
    ) -> WusOperation:
        """The operation named by wsa:Action (in its action form, published or WCF's); from
        here on a refusal carries that operation's fault action."""
        operation = operation_for_action(parsed.action) or EXTRA_OPERATIONS.get(parsed.action)
        if operation is None or operation.fault_element != service.fault_element:
            raise Refusal("malformed", "unknown_action", "onbekende wsa:Action voor deze service")
        seen.operation = operation
        if soap_action != parsed.action:
            raise Refusal("malformed", "action_mismatch", "wsa:Action verschilt van SOAPAction")
        if not self.addresses.is_service(parsed.to, service.path):
            raise Refusal("malformed", "wrong_to", "wsa:To is niet het adres van deze service")
        if etree.QName(parsed.payload).localname != operation.request_element:
            raise Refusal("malformed", "wrong_body", f"Body bevat geen {operation.request_element}")
        return operation

    def _verify_signature(self, parsed: ParsedEnvelope) -> VerifiedSecurity:
        try:
            return verify_envelope(
                parsed, allow_sha1=self.settings.wus.allow_sha1, max_clock_skew=self.skew
            )
        except WSSecurityError as exc:
            kind: Kind = "timestamp" if exc.code in _TIMESTAMP_CODES else "signature"
            raise Refusal(kind, exc.code, public=False) from None

    # ------------------------------------------------------------------ operations

    async def _dispatch(self, caller: Caller, bound: structlog.BoundLogger) -> etree._Element:
        name = caller.operation.name
        if name == "aanleveren":
            return await self._aanleveren(caller, bound)
        if name in OPHAAL_OPERATIONS or name == ZET_STATUS.name:
            return await self._recipient_operation(caller, bound)
        try:
            vraag = messages.parse_status_request(name, caller.parsed.payload)
        except messages.RequestInvalid as exc:
            raise Refusal("malformed", "xsd", str(exc)) from None
        handler: Callable[[Caller, messages.StatusVraag], Awaitable[etree._Element]] = {
            "getStatussenProces": self._statussen_proces,
            "getNieuweStatussenProces": self._statussen_proces,
            "getNieuweStatussen": self._nieuwe_statussen,
            "getProcessen": self._processen,
            "getBerichtsoorten": self._berichtsoorten,
        }[name]
        try:
            return await handler(caller, vraag)
        except (OSError, asyncpg.PostgresError) as exc:
            bound.error("wus.database_error", error=repr(exc))
            raise Refusal("technical", "database", public=False) from None

    async def _recipient_operation(
        self, caller: Caller, bound: structlog.BoundLogger
    ) -> etree._Element:
        """Ophaalservice and zetStatus: operations of recipients."""
        name, payload = caller.operation.name, caller.parsed.payload
        try:
            if name == ZET_STATUS.name:
                answer = await zet_status(self.pool, caller.oin, payload)
                bound.info("wus.zet_status", kenmerk=answer.findtext(f"{messages.KV}kenmerk"))
                return answer
            if self.ophaal is None:
                raise Refusal("technical", "no_payload_store", public=False)
            return await self.ophaal.handle(caller.oin, name, payload)
        except (OSError, asyncpg.PostgresError) as exc:
            bound.error("wus.database_error", error=repr(exc))
            raise Refusal("technical", "database", public=False) from None

    async def _aanleveren(self, caller: Caller, bound: structlog.BoundLogger) -> etree._Element:
        payload = caller.parsed.payload
        try:
            if len(payload.findtext(f"{messages.KV}berichtInhoud/{messages.KV}inhoud") or "") > (
                LARGE_BODY
            ):
                verzoek = await asyncio.to_thread(messages.parse_aanlever_request, payload)
            else:
                verzoek = messages.parse_aanlever_request(payload)
        except messages.InhoudTooLarge as exc:
            raise Refusal("too_large", "inhoud", str(exc)) from None
        except messages.RequestInvalid as exc:
            raise Refusal("malformed", "xsd", str(exc)) from None
        bound = bound.bind(berichtsoort=verzoek.berichtsoort)
        if self.conformance_mode and verzoek.berichtsoort == conformance.BERICHTSOORT:
            await self._check_replay(caller.seen)
            return await self._conformance_aanleveren(caller, verzoek, bound)
        if self.intake is None:
            raise Refusal("technical", "no_intake", public=False)
        aanlevering = Aanlevering(
            sender_oin=caller.oin,
            koppelvlak="wus",
            berichtsoort=verzoek.berichtsoort,
            belanghebbende=verzoek.belanghebbende,
            rol_belanghebbende=verzoek.rol_belanghebbende,
            inhoud=verzoek.inhoud,
            bijlagen=verzoek.bijlagen,
            aanleverkenmerk=verzoek.aanleverkenmerk,
            eerder_aanleverkenmerk=verzoek.eerder_aanleverkenmerk,
            ontvanger=verzoek.ontvanger,
            rol_ontvanger=verzoek.rol_ontvanger,
            autorisatie_adres=verzoek.autorisatie_adres,
            berichtkenmerk=caller.parsed.message_id,
        )
        replay = store.message_id_digest(caller.parsed.message_id)
        try:
            accepted = await self.intake.aanleveren(aanlevering, replay=replay)
        except IntakeRefused as exc:
            if exc.reden == IntakeRefused.REPLAY:
                caller.seen.replay_deferred = None
                raise Refusal("timestamp", "replayed_message_id", public=False) from None
            raise Refusal(
                _INTAKE_KINDS.get(exc.reden, "authorisation"), exc.reden, exc.melding
            ) from None
        except IntakeUnavailable:
            raise Refusal("technical", "intake_unavailable", public=False) from None
        caller.seen.replay_deferred = None  # recorded with the envelope
        bound.info("wus.aangeleverd", kenmerk=str(accepted.kenmerk))
        return messages.aanlever_response(
            verzoek, str(accepted.kenmerk), accepted.tijdstempel_aangeleverd
        )

    async def _conformance_aanleveren(
        self, caller: Caller, verzoek: messages.AanleverVerzoek, bound: structlog.BoundLogger
    ) -> etree._Element:
        scenario = conformance.scenario_for(verzoek.aanleverkenmerk)
        if scenario.aanlever_fault is not None:
            raise Refusal(
                scenario.aanlever_fault,
                f"conformance_{scenario.name}",
                f"Aansluit Suite scenario {scenario.name}",
            )
        if scenario.aanlever_delay:
            await asyncio.sleep(conformance.ZWAARBELAST_DELAY)
        kenmerk, tijdstempel = new_kenmerk(), now()
        await store.insert_conformance_envelope(
            self.pool,
            kenmerk=kenmerk,
            tijdstempel=tijdstempel,
            sender_oin=caller.oin,
            berichtkenmerk=caller.parsed.message_id,
            aanleverkenmerk=verzoek.aanleverkenmerk,
            belanghebbende=verzoek.belanghebbende,
            rol_belanghebbende=verzoek.rol_belanghebbende,
            ontvanger=verzoek.ontvanger,
            autorisatie_adres=verzoek.autorisatie_adres,
            statuses=conformance.scripted_statuses(
                scenario, kenmerk, tijdstempel, self.settings.gateway_oin
            ),
        )
        bound.info("wus.conformance_aangeleverd", kenmerk=str(kenmerk), scenario=scenario.name)
        return messages.aanlever_response(verzoek, str(kenmerk), tijdstempel)

    async def _envelope(self, caller: Caller, vraag: messages.StatusVraag) -> store.EnvelopeInfo:
        assert vraag.kenmerk is not None
        info = await store.visible_envelope(
            self.pool, caller.oin, vraag.kenmerk, vraag.autorisatie_adres
        )
        if info is None:
            # Unknown and someone else's look the same: existence never leaks.
            raise Refusal("authorisation", "kenmerk_not_visible", "onbekend kenmerk")
        if self.conformance_mode and info.berichtsoort == conformance.BERICHTSOORT:
            scenario = conformance.scenario_for(info.aanleverkenmerk)
            if scenario.status_fault is not None:
                raise Refusal(
                    scenario.status_fault,
                    f"conformance_{scenario.name}",
                    f"Aansluit Suite scenario {scenario.name}",
                )
            if scenario.status_delay:
                await asyncio.sleep(conformance.ZWAARBELAST_DELAY)
        return info

    async def _statussen_proces(
        self, caller: Caller, vraag: messages.StatusVraag
    ) -> etree._Element:
        info = await self._envelope(caller, vraag)
        if vraag.operation == "getNieuweStatussenProces":
            regels = await store.nieuwe_statussen_proces(
                self.pool, caller.oin, info.kenmerk, vraag.vanaf, vraag.tot
            )
        else:
            regels = await store.statussen(self.pool, info.kenmerk, vraag.vanaf, vraag.tot)
        return messages.statussen_response(vraag.operation, regels)

    def _check_berichtsoort(self, caller: Caller, berichtsoort: str | None) -> str:
        assert berichtsoort is not None
        if self.conformance_mode and berichtsoort == conformance.BERICHTSOORT:
            return berichtsoort
        if berichtsoort not in self.registry.current.berichtsoorten:
            raise Refusal("berichtsoort", "berichtsoort_onbekend", "onbekende berichtsoort")
        return berichtsoort

    async def _nieuwe_statussen(
        self, caller: Caller, vraag: messages.StatusVraag
    ) -> etree._Element:
        berichtsoort = self._check_berichtsoort(caller, vraag.berichtsoort)
        assert vraag.belanghebbende is not None
        regels = await store.nieuwe_statussen(
            self.pool,
            caller.oin,
            vraag.autorisatie_adres,
            berichtsoort,
            vraag.belanghebbende,
            vraag.vanaf,
            vraag.tot,
        )
        return messages.statussen_response(vraag.operation, regels)

    async def _processen(self, caller: Caller, vraag: messages.StatusVraag) -> etree._Element:
        berichtsoort = self._check_berichtsoort(caller, vraag.berichtsoort)
        assert vraag.belanghebbende is not None
        found = await store.processen(
            self.pool, caller.oin, vraag.autorisatie_adres, berichtsoort, vraag.belanghebbende
        )
        return messages.processen_response(found)

    async def _berichtsoorten(self, caller: Caller, vraag: messages.StatusVraag) -> etree._Element:
        names = self.registry.current.berichtsoorten_for_sender(caller.oin, "wus")
        if self.conformance_mode:
            names = sorted({*names, conformance.BERICHTSOORT})
        return messages.berichtsoorten_response(names)

    # ------------------------------------------------------------------ answers

    def _signed_response(self, caller: Caller, answer: etree._Element) -> bytes:
        """The answer, signed from the pre-canonicalised skeleton (response_signing)."""
        algorithm: Literal["sha1", "sha256"] = (
            "sha1" if caller.security.algorithm == "rsa-sha1" else "sha256"
        )
        return self.signer.sign(
            answer,
            action=caller.operation.response_action,
            relates_to=caller.parsed.message_id,
            algorithm=algorithm,
            now=datetime.now(UTC),
        )

    def _fault(
        self,
        service: Service,
        seen: _Seen,
        refusal: Refusal,
        started: float,
        bound: structlog.BoundLogger,
    ) -> web.Response:
        operation, message_id = seen.operation, seen.message_id
        number, faultcode = FAULT_NUMBERS[refusal.kind]
        code = service.foutcode_prefix + number
        op_name = operation.name if operation is not None else "unknown"
        bound.info("wus.refused", foutcode=code, kind=refusal.kind, reason=refusal.reason)
        metrics.WUS_REQUESTS.labels(op_name, "refused", code).inc()
        metrics.WUS_LATENCY.labels(op_name).observe(time.perf_counter() - started)
        body = build_fault(
            faultcode,
            "Algemene fout",
            service.fault_element,
            code,
            refusal.foutbeschrijving(),
            action=operation.fault_action if operation is not None else None,
            relates_to=message_id,
        )
        response = web.Response(status=500, body=body, content_type="text/xml", charset="utf-8")
        if refusal.reason in ("content_length", "body_size", "read_timeout"):
            response.force_close()  # do not read (or linger on) the rest of the body
        return response
