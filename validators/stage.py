"""The validation stage: identity (200), authorisation (2xx), content and schema (301/311).

For each envelope, in order:

1. status 200 — the adapter proved the sender's identity with its certificate;
2. authorisation against the registry as it is now (it may have changed since intake):
   refused → 210 (unknown sender) or 220 (not authorised) with an ATH foutcode;
3. size and MIME limits of the berichtsoort, well-formedness with the hardened parser,
   the berichtsoort's XSD → 301, or 311 with foutcode VAS500 and the errors (line,
   message) in statusdetails; a technical problem (schema missing, storage unreadable)
   → 321 with VAS400.
   A berichtsoort with a *validation profile* (official XSD + Schematron artefacts,
   docs/validation.md) is validated in the worker processes instead: fatal/error findings
   → 311 VAS500 with the findings (rule id, severity, text, XPath) in statusdetails;
   warnings only → 301 with the warnings in statusdetails. The profile and its versions
   are recorded on the envelope (``envelopes.validatieprofiel``).

The codes are listed in docs/codes.md. A validated envelope is routed in the same stage
and the same statement (issue 15: ``routing.router.RoutingStage`` plans the delivery rows
and 405s, then publishes to the recipient queues and records the 400s). Redelivered work
items are recognised by the envelope's stage and never validated twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from digipoort import metrics
from digipoort.broker import Broker
from digipoort.envelope import EnvelopeRecord, StoredDocument
from digipoort.payloads import PayloadStore
from digipoort.registry import Berichtsoort, Registry, Weigering
from digipoort.registry_store import RegistryHolder
from digipoort.status import Status
from digipoort.statusstore import write_stage_batch
from digipoort.xmlsafe import XmlLimits
from routing.router import ROUTED, RoutePlan, RoutingStage, fetch_for_stage
from validators.content import Violation, check_mime, check_size
from validators.findings import Finding, findings_from_violations, verdict
from validators.profileset import ProfileSet
from validators.schemas import SchemaRegistry, validate_document

log = structlog.get_logger(__name__)

ATH_CODES: dict[Weigering, tuple[str, str]] = {
    Weigering.AFZENDER_ONBEKEND: ("210", "ATH100"),
    Weigering.BERICHTSOORT_ONBEKEND: ("220", "ATH110"),
    Weigering.KOPPELVLAK_NIET_TOEGESTAAN: ("220", "ATH120"),
    Weigering.AFZENDER_NIET_GEAUTORISEERD: ("220", "ATH130"),
    Weigering.ONTVANGER_NIET_TOEGESTAAN: ("220", "ATH140"),
}

VALIDATED = "gevalideerd"
#: documents up to this size are validated on the event loop (cheaper than a hand-off)
INLINE_VALIDATION_BYTES = 256 * 1024
REFUSED = "geweigerd"


@dataclass(frozen=True)
class Outcome:
    statuses: list[Status]
    stage: str
    profile: str | None = None  # the validation profile (and versions) that judged it

    @property
    def forward(self) -> bool:
        return self.stage == VALIDATED


def technical_problem(accepted: Status) -> Outcome:
    """200, then 321 VAS400: the gateway could not judge the document (not its fault)."""
    failed = Status(
        accepted.kenmerk,
        "321",
        foutcode="VAS400",
        foutbeschrijving="Technisch probleem bij validatie",
    )
    return Outcome([accepted, failed], REFUSED)


def format_violations(violations: Sequence[Violation]) -> str:
    lines = []
    for v in violations:
        where = f"regel {v.line}: " if v.line else ""
        lines.append(f"{where}{v.message}")
    return "\n".join(lines)


class ValidationStage:
    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        store: PayloadStore,
        registry: RegistryHolder,
        schemas: SchemaRegistry,
        *,
        xml_limits: XmlLimits,
        profiles: ProfileSet | None = None,
        router: RoutingStage,
        max_findings: int = 50,
    ) -> None:
        self._router = router
        self._profiles = profiles
        self._max_findings = max_findings
        self._pool = pool
        self._broker = broker
        self._store = store
        self._registry = registry
        self._schemas = schemas
        self._xml_limits = xml_limits
        self._local = threading.local()
        self._local.schemas = schemas  # the event loop's thread uses the given registry
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate")

    async def handle(self, kenmerken: list[UUID]) -> None:
        """Validate and route a batch: ONE statement writes every status (200, 301/311/
        321/210/220, 405 per recipient), the delivery rows and the envelopes' stage; then
        one publish per recipient queue (confirms awaited together) and one statement for
        the 400s (:meth:`RoutingStage.deliver`). Redelivered items are recognised by the
        envelope's stage: validated-not-routed ones (a crash of an older version between
        its commit and its publish) are routed, routed ones re-publish only their pending
        deliveries, refused ones are done."""
        router = self._router
        records = await fetch_for_stage(self._pool, kenmerken)
        registry = self._registry.current
        statuses: list[Status] = []
        profiles: dict[UUID, str] = {}
        plan = RoutePlan()
        for kenmerk in dict.fromkeys(kenmerken):
            record = records.get(kenmerk)
            if record is None:
                raise LookupError(f"envelope {kenmerk} not found")
            if record.stage != "aangeboden":
                if record.stage in (VALIDATED, ROUTED):
                    router.plan(record, registry, plan)
                continue
            outcome = await self.evaluate(record, registry)
            statuses.extend(outcome.statuses)
            plan.stages[kenmerk] = outcome.stage
            if outcome.profile:
                profiles[kenmerk] = outcome.profile
            if outcome.forward:
                router.route(record, registry, plan)  # sets the stage to gerouteerd
        if plan.stages:
            await write_stage_batch(
                self._pool,
                [*statuses, *plan.statuses],
                stages=plan.stages,
                profiles=profiles,
                deliveries=plan.rows,
            )
            for s in statuses:
                metrics.STATUSES.labels(s.code).inc()
                if s.foutcode:
                    metrics.VALIDATION_REFUSED.labels(s.foutcode).inc()
            if plan.statuses:
                metrics.STATUSES.labels("405").inc(len(plan.statuses))
        await router.pending_of(self._pool, plan)
        await router.deliver(records, plan.publish)

    async def evaluate(self, record: EnvelopeRecord, registry: Registry) -> Outcome:
        k = record.kenmerk
        log_ = log.bind(
            kenmerk=str(k), sender_oin=record.sender_oin, berichtsoort=record.berichtsoort
        )
        fout = registry.authorise(
            sender_oin=record.sender_oin,
            berichtsoort=record.berichtsoort,
            koppelvlak=record.koppelvlak,
            ontvanger_oin=record.ontvanger_oin,
        )
        if fout is not None:
            code, foutcode = ATH_CODES[fout.reden]
            log_.info("autorisatie geweigerd", foutcode=foutcode, melding=fout.melding)
            statuses = [] if code == "210" else [Status(k, "200")]
            statuses.append(Status(k, code, foutcode=foutcode, foutbeschrijving=fout.melding))
            return Outcome(statuses, REFUSED)
        accepted = Status(k, "200")
        soort = registry.berichtsoorten[record.berichtsoort]
        if soort.validation is not None and self._profiles is not None:
            return await self._evaluate_profile(record, soort, accepted, log_)
        try:
            violations = await self._check_documents(
                record.documents, soort.max_size, soort.mime_types, soort.xml, soort.xsd
            )
        except Exception as exc:
            log_.error("technisch probleem bij validatie", error=repr(exc))
            return technical_problem(accepted)
        if violations:
            details = format_violations(violations)
            log_.info("validatie niet gelukt", violations=len(violations))
            return Outcome(
                [
                    accepted,
                    Status(
                        k,
                        "311",
                        foutcode="VAS500",
                        foutbeschrijving="Validatie niet gelukt",
                        details=details,
                    ),
                ],
                REFUSED,
            )
        log_.debug("validatie gelukt")
        return Outcome([accepted, Status(k, "301")], VALIDATED)

    async def _evaluate_profile(
        self, record: EnvelopeRecord, soort: Berichtsoort, accepted: Status, log_: Any
    ) -> Outcome:
        """Limits, then the berichtsoort's validation profile in the worker processes."""
        assert self._profiles is not None and soort.validation is not None
        k = record.kenmerk
        label = soort.validation.label
        try:
            findings, label = await self._profile_findings(record, soort, label)
        except Exception as exc:
            log_.error("technisch probleem bij validatie", error=str(exc) or repr(exc))
            return technical_problem(accepted)
        judged = verdict(findings, profile=label, max_findings=self._max_findings)
        status = Status(
            k,
            judged.code,
            foutcode=judged.foutcode,
            foutbeschrijving=judged.foutbeschrijving,
            details=judged.details,
        )
        if not judged.accepted:
            refusing = sorted({f.rule for f in findings if f.refusing})
            log_.info(
                "validatie niet gelukt", findings=len(findings), rules=refusing[:20], profiel=label
            )
            return Outcome([accepted, status], REFUSED, label)
        log_.debug("validatie gelukt", warnings=len(findings), profiel=label)
        return Outcome([accepted, status], VALIDATED, label)

    async def _profile_findings(
        self, record: EnvelopeRecord, soort: Berichtsoort, label: str
    ) -> tuple[list[Finding], str]:
        assert self._profiles is not None
        limits = self._limit_violations(record.documents, soort.max_size, soort.mime_types)
        if limits:
            return findings_from_violations(limits, None), label
        inhoud = next(d for d in record.documents if d.seq == 0)
        if not soort.xml:
            return [], label
        spec = await self._profiles.get(soort.name)
        data = inhoud.data if inhoud.data is not None else await self._store.read(inhoud.sha256)
        return await self._profiles.pool.check(spec, data, self._xml_limits), spec.label

    def _limit_violations(
        self, documents: Sequence[StoredDocument], max_size: int, mime_types: Sequence[str]
    ) -> list[Violation]:
        violations: list[Violation] = []
        for doc in documents:
            v = check_size(doc.size, max_size)
            if v is not None:
                violations.append(Violation(v.code, f"{doc.bestandsnaam}: {v.message}"))
        inhoud = next((d for d in documents if d.seq == 0), None)
        if inhoud is None:
            return [Violation("missing", "berichtInhoud ontbreekt")]
        mime = check_mime(inhoud.mime_type, mime_types) if mime_types else None
        if mime is not None:
            violations.append(mime)
        return violations

    async def _check_documents(
        self,
        documents: Sequence[StoredDocument],
        max_size: int,
        mime_types: Sequence[str],
        xml: bool,
        xsd: str | None,
    ) -> list[Violation]:
        violations = self._limit_violations(documents, max_size, mime_types)
        inhoud = next((d for d in documents if d.seq == 0), None)
        if violations or not xml or inhoud is None:
            return violations
        data = inhoud.data if inhoud.data is not None else await self._store.read(inhoud.sha256)
        if len(data) <= INLINE_VALIDATION_BYTES:
            return self._validate(data, xsd)
        # Large documents are validated in the stage's own thread (lxml releases the GIL
        # while parsing), so the event loop keeps serving other envelopes meanwhile.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._validate, data, xsd)

    def _validate(self, data: bytes, xsd: str | None) -> list[Violation]:
        """Well-formedness and XSD with this thread's own compiled schemas (lxml schema
        objects must not be shared between threads)."""
        registry: SchemaRegistry | None = getattr(self._local, "schemas", None)
        if registry is None:
            registry = SchemaRegistry(self._schemas.search_dirs)
            self._local.schemas = registry
        schema = registry.get(xsd) if xsd else None
        return validate_document(data, schema, self._xml_limits)
