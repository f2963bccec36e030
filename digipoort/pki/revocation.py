"""One revocation service per process: CRLs (local files and CDP URLs) and OCSP (AIA).

Every verifier of the process (WUS, Grote Berichten, SMTP, POP3, FTPS, the deliverer's
peer checks, the Grote Berichten fetcher) asks the same :class:`RevocationService`, and
every server ``SSLContext`` registered with it receives each newly fetched CRL, so the
handshake and the application see the same revocation data.

* Sources: the local CRL files (``pki.crl_files``, re-read when they change), the HTTP
  CRL distribution points of every certificate seen (and of the configured
  intermediates and the gateway's own certificate, fetched at start), and the OCSP
  responder named in a certificate's Authority Information Access.
* :meth:`RevocationService.status` is synchronous and never does I/O: it answers from
  the cache and, on a miss, schedules a fetch on the service's event loop. Async callers
  can ``await service.prepare(cert, issuer)`` first so that a first contact is decided
  on fresh data instead of "unknown".
* Refresh: each CRL URL is fetched again after ``refresh_seconds`` or shortly before
  its nextUpdate, whichever comes first; an OCSP answer is cached until its nextUpdate
  (at most ``refresh_seconds``).
* Verdict: revoked if any CRL of the issuer (signature checked) or a current OCSP answer
  says so; good if a current CRL or a current OCSP answer says so; otherwise unknown —
  the verifier then fails closed or soft-fails (``pki.revocation.unknown_status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeAlias
from weakref import WeakSet

import aiohttp
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from prometheus_client import Counter

from digipoort.pki.tls import refresh_crl
from digipoort.pki.trust import load_crls, parse_crls

__all__ = [
    "RevocationService",
    "RevocationStatus",
    "cdp_urls",
    "ocsp_urls",
]

log = structlog.get_logger(__name__)

FETCHES = Counter(
    "digipoort_revocation_fetches_total",
    "CRL and OCSP fetches by kind and outcome",
    ["kind", "outcome"],
)

State: TypeAlias = Literal["good", "revoked", "unknown"]

#: Fetch a CRL again this long before its nextUpdate.
_NEXT_UPDATE_MARGIN = timedelta(seconds=30)
#: After a failed fetch, try again after this long (doubling up to refresh_seconds).
_RETRY_MIN = 1.0
#: Bounds on what the service tracks (only certificates that chained to an anchor).
MAX_URLS = 1000
MAX_OCSP = 10000


@dataclass(frozen=True)
class RevocationStatus:
    state: State
    source: str = ""  # "crl" or "ocsp"
    detail: str = ""
    valid_until: datetime | None = None  # until when a "good" answer may be cached


def cdp_urls(cert: x509.Certificate) -> list[str]:
    """The HTTP(S) URLs of the certificate's CRL distribution points."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    urls = []
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("http"):
                urls.append(name.value)
    return urls


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    """The HTTP URLs of the certificate's OCSP responders (AIA)."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
        and d.access_location.value.startswith("http")
    ]


def publishes_revocation(cert: x509.Certificate) -> bool:
    """Does the certificate name a CRL distribution point or an OCSP responder?"""
    return bool(cdp_urls(cert) or ocsp_urls(cert))


# --------------------------------------------------------------------------- signatures


def _signed_by(
    signature: bytes,
    data: bytes,
    algorithm: hashes.HashAlgorithm | None,
    signer: x509.Certificate,
) -> bool:
    key = signer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _ocsp_signer(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate | None:
    """The issuer itself, or a delegated responder certificate it issued for OCSP signing."""
    if _signed_by(
        response.signature, response.tbs_response_bytes, response.signature_hash_algorithm, issuer
    ):
        return issuer
    for cert in response.certificates:
        try:
            cert.verify_directly_issued_by(issuer)
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in eku and _signed_by(
            response.signature, response.tbs_response_bytes,
            response.signature_hash_algorithm, cert,
        ):  # fmt: skip
            return cert
    return None


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


# --------------------------------------------------------------------------- caches


@dataclass
class _CrlEntry:
    crl: x509.CertificateRevocationList
    source: str  # URL or file path


@dataclass
class _UrlState:
    next_fetch: float = 0.0  # monotonic
    failures: int = 0
    inflight: asyncio.Future[None] | None = None


@dataclass(frozen=True)
class _OcspAnswer:
    state: State
    next_update: datetime
    detail: str


_OcspKey: TypeAlias = tuple[bytes, int]  # issuer SPKI fingerprint, serial


@dataclass
class _OcspWanted:
    cert: x509.Certificate
    issuer: x509.Certificate
    url: str
    inflight: asyncio.Future[None] | None = None
    next_fetch: float = 0.0
    failures: int = 0


# --------------------------------------------------------------------------- service


@dataclass
class RevocationService:
    """CRL and OCSP status for every certificate the process checks. See the module doc."""

    crl_files: Sequence[Path] = ()
    fetch: bool = True
    refresh_seconds: float = 300.0
    timeout_seconds: float = 5.0
    max_bytes: int = 10 * 1024 * 1024
    seeds: Sequence[x509.Certificate] = ()  # their CDP URLs are fetched at start
    # the configured CAs: only CRLs one of them signed go into the SSL contexts (OpenSSL
    # picks a CRL by issuer name and would fail a handshake on a foreign one)
    issuers: Sequence[x509.Certificate] = ()

    generation: int = 0
    _crls: dict[x509.Name, list[_CrlEntry]] = field(default_factory=dict)
    _file_crls: dict[Path, list[x509.CertificateRevocationList]] = field(default_factory=dict)
    _mtimes: dict[Path, int] = field(default_factory=dict)
    _url_crls: dict[str, x509.CertificateRevocationList] = field(default_factory=dict)
    _urls: dict[str, _UrlState] = field(default_factory=dict)
    _ocsp: dict[_OcspKey, _OcspAnswer] = field(default_factory=dict)
    _ocsp_wanted: dict[_OcspKey, _OcspWanted] = field(default_factory=dict)
    _sig_ok: dict[tuple[bytes, bytes], bool] = field(default_factory=dict)
    _fps: dict[bytes, bytes] = field(default_factory=dict)
    _contexts: WeakSet[ssl.SSLContext] = field(default_factory=WeakSet)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _task: asyncio.Task[None] | None = None
    _session: aiohttp.ClientSession | None = None
    _wake: asyncio.Event | None = None
    _users: int = 0

    def __post_init__(self) -> None:
        self.reload_files()
        for cert in self.seeds:
            for url in cdp_urls(cert):
                self._urls.setdefault(url, _UrlState())

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start (or join) the background refresher on the running loop."""
        loop = asyncio.get_running_loop()
        self._users += 1
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        if self._loop is not loop:  # futures and the HTTP session belong to their loop
            self._session = None
            for state in self._urls.values():
                state.inflight = None
            for wanted in self._ocsp_wanted.values():
                wanted.inflight = None
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="revocation-refresher")
        if self.fetch:
            await self.refresh_due()  # the seeds, so the first handshakes have fresh CRLs

    async def stop(self) -> None:
        """Leave; the refresher stops when its last user left."""
        self._users = max(0, self._users - 1)
        if self._users or self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def register_context(self, context: ssl.SSLContext) -> None:
        """Write every CRL this service holds (and every new one) into this SSLContext."""
        self._contexts.add(context)
        for crl in self._for_contexts():
            self._load_into(context, crl)

    # ----------------------------------------------------------------- queries

    def status(
        self, cert: x509.Certificate, issuer: x509.Certificate, at: datetime | None = None
    ) -> RevocationStatus:
        """The cached status of cert (issued by issuer); never blocks on I/O."""
        at = at or datetime.now(UTC)
        crls = self._crls_for(issuer)
        for crl in crls:
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                return RevocationStatus("revoked", "crl", f"serial {cert.serial_number:x}")
        key = (self._fingerprint(issuer), cert.serial_number)
        answer = self._ocsp.get(key)
        if answer is not None and answer.next_update >= at:
            if answer.state == "revoked":
                return RevocationStatus("revoked", "ocsp", answer.detail)
        self._want(cert, issuer, key)
        current = [c for c in crls if c.next_update_utc is None or c.next_update_utc >= at]
        if current:
            nxt = current[0].next_update_utc
            return RevocationStatus("good", "crl", valid_until=nxt)
        if answer is not None and answer.next_update >= at and answer.state == "good":
            return RevocationStatus("good", "ocsp", valid_until=answer.next_update)
        if crls:
            return RevocationStatus("unknown", "crl", "CRL is past its nextUpdate")
        if self._has_issuer_name(issuer.subject):
            return RevocationStatus("unknown", "crl", "CRL signature does not verify")
        return RevocationStatus("unknown", "", "no CRL or OCSP answer for the issuer")

    async def prepare(self, cert: x509.Certificate, issuer: x509.Certificate) -> None:
        """Make sure status() can answer for cert: fetch what is missing (bounded wait)."""
        if self.status(cert, issuer).state != "unknown" or not self.fetch:
            return
        now = time.monotonic()
        # a URL that failed recently is not tried again before its back-off has passed
        waits = [
            self._fetch_url(url)
            for url in cdp_urls(cert)
            if url not in self._urls or self._urls[url].next_fetch <= now
        ]
        key = (self._fingerprint(issuer), cert.serial_number)
        wanted = self._ocsp_wanted.get(key)
        if wanted is not None and wanted.next_fetch <= now:
            waits.append(self._fetch_ocsp(wanted))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout_seconds + 1):
                await asyncio.gather(*waits, return_exceptions=True)

    def expiry_report(self) -> dict[str, datetime]:
        """nextUpdate of the newest CRL per issuer."""
        return {
            f"crl:{name.rfc4514_string()}": entries[0].crl.next_update_utc
            for name, entries in self._crls.items()
            if entries and entries[0].crl.next_update_utc is not None
        }

    # ----------------------------------------------------------------- CRL store

    def reload_files(self) -> None:
        """Re-read the local CRL files; one that cannot be read keeps its previous CRLs."""
        for path in self.crl_files:
            try:
                stamp = path.stat().st_mtime_ns
                if self._mtimes.get(path) == stamp:
                    continue
                crls = load_crls(path)
                self._mtimes[path] = stamp
            except (OSError, ValueError) as exc:
                if path in self._file_crls or path.exists():
                    log.warning("pki.crl_reload_failed", path=str(path), error=type(exc).__name__)
                continue
            if crls != self._file_crls.get(path):
                self._file_crls[path] = crls
                self._rebuild()

    def add_crl(self, crl: x509.CertificateRevocationList, source: str) -> bool:
        """Add a fetched CRL; True if it is new."""
        if self._url_crls.get(source) == crl:
            return False
        self._url_crls[source] = crl
        self._rebuild()
        return True

    def _rebuild(self) -> None:
        grouped: dict[x509.Name, list[_CrlEntry]] = {}
        for path, crls in self._file_crls.items():
            for crl in crls:
                grouped.setdefault(crl.issuer, []).append(_CrlEntry(crl, str(path)))
        for url, crl in self._url_crls.items():
            grouped.setdefault(crl.issuer, []).append(_CrlEntry(crl, url))
        for entries in grouped.values():
            entries.sort(key=lambda e: (e.crl.last_update_utc, _crl_number(e.crl)), reverse=True)
        with self._lock:
            self._crls = grouped
            self.generation += 1
        newest = self._for_contexts()
        for context in list(self._contexts):
            for crl in newest:
                self._load_into(context, crl)

    def _for_contexts(self) -> list[x509.CertificateRevocationList]:
        """Per issuer, the newest CRL signed by one of the configured CAs."""
        chosen = []
        for name in self._crls:
            for issuer in (c for c in self.issuers if c.subject == name):
                crls = self._crls_for(issuer)
                if crls:
                    chosen.append(crls[0])
                    break
        return chosen

    def _has_issuer_name(self, name: x509.Name) -> bool:
        return name in self._crls

    def _fingerprint(self, cert: x509.Certificate) -> bytes:
        """SHA-256 of the certificate, remembered (a handful of CAs, asked per check)."""
        fp = self._fps.get(cert.signature)
        if fp is None:
            if len(self._fps) >= MAX_URLS:
                self._fps.clear()
            fp = self._fps[cert.signature] = cert.fingerprint(hashes.SHA256())
        return fp

    def _crls_for(self, issuer: x509.Certificate) -> list[x509.CertificateRevocationList]:
        """CRLs named for issuer whose signature its key confirms, newest first."""
        fp = self._fingerprint(issuer)
        result = []
        for entry in self._crls.get(issuer.subject, ()):
            key = (entry.crl.signature, fp)
            ok = self._sig_ok.get(key)
            if ok is None:
                ok = entry.crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
                if len(self._sig_ok) >= MAX_OCSP:
                    self._sig_ok.clear()
                self._sig_ok[key] = ok
            if ok:
                result.append(entry.crl)
        return result

    def _load_into(self, context: ssl.SSLContext, crl: x509.CertificateRevocationList) -> None:
        # Python's ssl loads CRLs only from files (cadata takes certificates only)
        with tempfile.NamedTemporaryFile(prefix="digipoort-crl-", suffix=".pem") as tmp:
            tmp.write(crl.public_bytes(serialization.Encoding.PEM))
            tmp.flush()
            try:
                refresh_crl(context, Path(tmp.name))
            except Exception as exc:  # a bad CRL must not stop the others
                log.warning("pki.crl_context_load_failed", error=str(exc))

    # ----------------------------------------------------------------- fetching

    def _want(self, cert: x509.Certificate, issuer: x509.Certificate, key: _OcspKey) -> None:
        """Note cert's CDP URLs and OCSP responder; wake the refresher if any is new."""
        if not self.fetch:
            return
        new = False
        for url in cdp_urls(cert):
            if url not in self._urls and len(self._urls) < MAX_URLS:
                self._urls[url] = _UrlState()
                new = True
        urls = ocsp_urls(cert)
        if urls and key not in self._ocsp_wanted:
            while len(self._ocsp_wanted) >= MAX_OCSP:  # forget the oldest
                old = next(iter(self._ocsp_wanted))
                del self._ocsp_wanted[old]
                self._ocsp.pop(old, None)
            self._ocsp_wanted[key] = _OcspWanted(cert, issuer, urls[0])
            new = True
        if new and self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # loop closed
                self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                self.reload_files()
                if self.fetch:
                    await self.refresh_due()
            except Exception as exc:
                log.warning("pki.revocation_refresh_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.refresh_seconds, 1.0)):
                    await self._wake.wait()
            self._wake.clear()

    async def refresh_due(self) -> None:
        """Fetch every CRL URL and OCSP answer that is due."""
        now = time.monotonic()
        jobs = [self._fetch_url(u) for u, s in list(self._urls.items()) if s.next_fetch <= now]
        jobs += [self._fetch_ocsp(w) for w in list(self._ocsp_wanted.values())
                 if w.next_fetch <= now]  # fmt: skip
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds)
            )
        return self._session

    async def _read_limited(self, response: aiohttp.ClientResponse) -> bytes:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        body = bytearray()
        async for chunk in response.content.iter_chunked(65536):
            body += chunk
            if len(body) > self.max_bytes:
                raise ValueError(f"response larger than {self.max_bytes} bytes")
        return bytes(body)

    async def _fetch_url(self, url: str) -> None:
        state = self._urls.setdefault(url, _UrlState())
        if state.inflight is not None:
            await asyncio.shield(state.inflight)
            return
        state.inflight = asyncio.get_running_loop().create_future()
        try:
            await self._do_fetch_url(url, state)
        finally:
            state.inflight.set_result(None)
            state.inflight = None

    async def _do_fetch_url(self, url: str, state: _UrlState) -> None:
        try:
            async with self._http().get(url) as response:
                data = await self._read_limited(response)
            crls = await asyncio.to_thread(parse_crls, data)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self._failed(state, "crl", url, exc)
            return
        FETCHES.labels("crl", "ok").inc()
        state.failures = 0
        nearest = self.refresh_seconds
        for crl in crls:
            if self.add_crl(crl, url):
                log.info("pki.crl_fetched", url=url, issuer=crl.issuer.rfc4514_string(),
                         next_update=str(crl.next_update_utc))  # fmt: skip
            if crl.next_update_utc is not None:
                left = crl.next_update_utc - _NEXT_UPDATE_MARGIN - datetime.now(UTC)
                nearest = min(nearest, max(left.total_seconds(), _RETRY_MIN))
        state.next_fetch = time.monotonic() + nearest

    def _failed(self, state: _UrlState | _OcspWanted, kind: str, url: str, exc: Exception) -> None:
        FETCHES.labels(kind, "failed").inc()
        state.failures += 1
        delay = min(self.refresh_seconds, _RETRY_MIN * 2 ** min(state.failures, 10))
        state.next_fetch = time.monotonic() + delay
        if state.failures == 1:  # one line per failure streak, not per retry
            log.warning(f"pki.{kind}_fetch_failed", url=url, error=str(exc) or type(exc).__name__)

    async def _fetch_ocsp(self, wanted: _OcspWanted) -> None:
        if wanted.inflight is not None:
            await asyncio.shield(wanted.inflight)
            return
        wanted.inflight = asyncio.get_running_loop().create_future()
        try:
            await self._do_fetch_ocsp(wanted)
        finally:
            wanted.inflight.set_result(None)
            wanted.inflight = None

    async def _do_fetch_ocsp(self, wanted: _OcspWanted) -> None:
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(wanted.cert, wanted.issuer, hashes.SHA256())
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        headers = {"Content-Type": "application/ocsp-request"}
        try:
            async with self._http().post(wanted.url, data=request, headers=headers) as response:
                data = await self._read_limited(response)
            answer = self._ocsp_answer(data, wanted)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self._failed(wanted, "ocsp", wanted.url, exc)
            return
        FETCHES.labels("ocsp", "ok").inc()
        wanted.failures = 0
        key = (self._fingerprint(wanted.issuer),
               wanted.cert.serial_number)  # fmt: skip
        if self._ocsp.get(key) != answer:
            with self._lock:
                self._ocsp[key] = answer
                self.generation += 1
        left = (answer.next_update - _NEXT_UPDATE_MARGIN - datetime.now(UTC)).total_seconds()
        wanted.next_fetch = time.monotonic() + max(_RETRY_MIN, min(self.refresh_seconds, left))

    def _ocsp_answer(self, data: bytes, wanted: _OcspWanted) -> _OcspAnswer:
        response = ocsp.load_der_ocsp_response(data)
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise ValueError(f"OCSP status {response.response_status.name}")
        if _ocsp_signer(response, wanted.issuer) is None:
            raise ValueError("OCSP response signature does not verify")
        for single in response.responses:
            if single.serial_number != wanted.cert.serial_number:
                continue
            now = datetime.now(UTC)
            if single.this_update_utc > now + timedelta(minutes=5):
                raise ValueError("OCSP thisUpdate in the future")
            next_update = single.next_update_utc or now + timedelta(seconds=self.refresh_seconds)
            if next_update < now:
                raise ValueError("OCSP answer past its nextUpdate")
            status = single.certificate_status
            if status == ocsp.OCSPCertStatus.REVOKED:
                return _OcspAnswer("revoked", next_update, f"serial {single.serial_number:x}")
            if status == ocsp.OCSPCertStatus.GOOD:
                return _OcspAnswer("good", next_update, "")
            return _OcspAnswer("unknown", next_update, "responder does not know it")
        raise ValueError("OCSP response does not answer for the certificate")
