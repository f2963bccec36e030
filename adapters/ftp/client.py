"""An FTPS test client (``digipoort submit --via ftp``): explicit TLS with the client
certificate, upload to ``/in/<berichtsoort>/<name>`` with a progress bar, resume (REST)
after a broken connection, and the kenmerk from the 226 reply / the status file."""

from __future__ import annotations

import ftplib
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from adapters.ftp.paths import SNIFF_BYTES, mime_type_for
from digipoort.clienterrors import CertificateRefused, ClientError, diagnose
from digipoort.pki import certificate_file_oin, client_ssl_context

__all__ = ["CLI", "FtpUploadError", "FtpsClient"]

BLOCK = 1024 * 1024
_KENMERK = re.compile(r"kenmerk ([0-9a-f-]{36})")


class FtpUploadError(ClientError):
    """The gateway refused (``foutcode`` = the FTP reply code) or the transfer failed."""

    def __init__(self, message: str, foutcode: str | None = None) -> None:
        super().__init__(message)
        self.foutcode = foutcode


def _refusal(exc: ftplib.Error) -> FtpUploadError:
    text = str(exc).strip()
    code = text[:3] if text[:3].isdigit() else None
    return FtpUploadError(text, code)


class _ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS that resumes the control connection's TLS session on data connections
    (what curl and lftp do; servers like vsftpd require it)."""

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[Any, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)  # noqa: S321
        if self._prot_p:  # type: ignore[attr-defined]
            conn = self.context.wrap_socket(
                conn,
                server_hostname=self.host,
                session=self.sock.session,  # type: ignore[union-attr]
            )
        return conn, size


class FtpsClient:
    def __init__(self, host: str, port: int, cert: Path, key: Path, ca: Path,
                 *, timeout: float = 60.0) -> None:  # fmt: skip
        self.host, self.port = host, port
        self.cert, self.ca = cert, ca
        self.context = client_ssl_context(cert, key, ca)
        self.oin = oin_of(cert)
        self.timeout = timeout
        self.ftp: ftplib.FTP_TLS | None = None

    def connect(self) -> ftplib.FTP_TLS:
        """Connect, AUTH TLS, log in by certificate, PROT P. A refused certificate is a
        :class:`~digipoort.clienterrors.CertificateRefused` saying why (as far as known)."""
        ftp = _ReusingFTP_TLS(context=self.context, timeout=self.timeout)
        try:
            ftp.connect(self.host, self.port)
        except OSError as exc:
            raise FtpUploadError(
                f"cannot reach the gateway at {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        try:
            ftp.auth()
            ftp.login(self.oin, "")
            ftp.prot_p()
        except (OSError, EOFError, ftplib.Error) as exc:
            ftp.close()
            refused = diagnose(exc, self.cert, self.ca)
            if refused is not None:
                raise refused from exc
            if isinstance(exc, ftplib.error_perm):
                text = str(exc).strip()
                if text.startswith("530") and "certificate" in text.lower():
                    raise CertificateRefused(
                        f"the gateway refused the certificate {self.cert.name}: {text}"
                    ) from exc
                raise _refusal(exc) from exc
            raise
        self.ftp = ftp
        return ftp

    def close(self) -> None:
        if self.ftp is not None:
            try:
                self.ftp.quit()
            except (OSError, ftplib.Error, EOFError):
                self.ftp.close()
            self.ftp = None

    def upload(
        self,
        berichtsoort: str,
        file: Path,
        *,
        name: str | None = None,
        mime_type: str | None = None,
        progress: Callable[[int], None] | None = None,
        retries: int = 5,
    ) -> str:
        """Upload and return the kenmerk; resumes with REST after a broken connection.

        The MIME type (``mime_type``, else derived from the local file's name or content)
        is announced with ``SITE MIME``: the remote name (the aanleverkenmerk) may have
        no extension, so the server cannot derive it from that."""
        remote = f"/in/{berichtsoort}/{name or file.name}"
        total = file.stat().st_size
        with open(file, "rb") as fh:
            mime = mime_type or mime_type_for(file.name, fh.read(SNIFF_BYTES))
        attempt = 0
        while True:
            ftp = self.ftp or self.connect()
            try:
                offset = self._remote_size(ftp, remote)
                if progress:
                    progress(offset)
                with open(file, "rb") as fh:
                    fh.seek(offset)
                    ftp.voidcmd(f"ALLO {total}")
                    ftp.voidcmd(f"SITE MIME {mime}")
                    resp = ftp.storbinary(
                        f"STOR {remote}",
                        fh,
                        blocksize=BLOCK,
                        callback=(lambda b: progress(len(b))) if progress else None,
                        rest=offset or None,
                    )
                m = _KENMERK.search(resp)
                if not m:
                    raise FtpUploadError(f"no kenmerk in reply: {resp}")
                return m.group(1)
            except ftplib.error_perm as exc:
                raise _refusal(exc) from None
            except (OSError, EOFError, ftplib.error_temp, ftplib.error_reply) as exc:
                attempt += 1
                self.close()
                if attempt > retries:
                    raise FtpUploadError(f"giving up after {retries} retries: {exc}") from exc
                time.sleep(min(2**attempt, 30))

    @staticmethod
    def _remote_size(ftp: ftplib.FTP_TLS, remote: str) -> int:
        try:
            return ftp.size(remote) or 0
        except ftplib.error_perm:
            return 0


def oin_of(cert_file: Path) -> str:
    try:
        return certificate_file_oin(cert_file)
    except ValueError as exc:
        raise FtpUploadError(str(exc)) from None


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"ftps://{url}")
    if parts.scheme not in ("ftp", "ftps", "ftpes"):
        raise FtpUploadError(f"--url must be ftps://host:port (got {url!r})")
    return parts.hostname or "127.0.0.1", parts.port or 8021


class _Cli:
    """What ``digipoort submit --via ftp`` calls (entry point ``digipoort.submitters``)."""

    def submit(
        self,
        *,
        url: str,
        cert: Path,
        key: Path,
        ca: Path,
        berichtsoort: str,
        file: Path,
        ontvanger: str | None = None,
        bijlagen: Sequence[Path] = (),
        aanleverkenmerk: str | None = None,
        mime_type: str = "",
        **_: Any,
    ) -> dict[str, Any]:
        from digipoort.clikit import progress_bar

        if ontvanger or bijlagen:
            raise FtpUploadError("FTP carries one file per envelope (no --ontvanger/--bijlage)")
        host, port = _host_port(url)
        client = FtpsClient(host, port, cert, key, ca)
        size = file.stat().st_size
        with progress_bar(file.name, size) as advance:
            try:
                kenmerk = client.upload(
                    berichtsoort,
                    file,
                    name=aanleverkenmerk,
                    mime_type=mime_type or None,
                    progress=advance,
                )
            finally:
                client.close()
        return {"kenmerk": kenmerk, "berichtsoort": berichtsoort, "bytes": size}

    def status(
        self, *, url: str, cert: Path, key: Path, ca: Path, kenmerk: str
    ) -> list[dict[str, Any]]:
        """The history from ``/out/<aanleverkenmerk>.<kenmerk>.status.xml``, as the
        StatusResultaat fields (the same as the WUS client returns)."""
        host, port = _host_port(url)
        client = FtpsClient(host, port, cert, key, ca)
        ftp = client.connect()
        try:
            suffix = f".{kenmerk}.status.xml"
            names = [n.rsplit("/", 1)[-1] for n in ftp.nlst("/out")]
            found = [n for n in names if n.endswith(suffix)]
            if not found:
                raise FtpUploadError(f"no status file for {kenmerk} in /out/ (unknown kenmerk?)")
            chunks: list[bytes] = []
            size = 0

            def keep(chunk: bytes) -> None:
                nonlocal size
                size += len(chunk)
                if size > MAX_STATUS_FILE:
                    raise FtpUploadError(f"status file larger than {MAX_STATUS_FILE} bytes")
                chunks.append(chunk)

            ftp.retrbinary(f"RETR /out/{found[0]}", keep)
        except ftplib.error_perm as exc:
            raise _refusal(exc) from None
        finally:
            client.close()
        return parse_status_file(b"".join(chunks))


#: A status file is a few KiB; more is not a status file.
MAX_STATUS_FILE = 4 * 1024 * 1024


def parse_status_file(data: bytes) -> list[dict[str, Any]]:
    """An ``ArrayOfStatusResultaat`` document as StatusResultaat dicts (hardened parser:
    no entities, no network)."""
    from lxml import etree

    from adapters.wus.client import status_dicts

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise FtpUploadError(f"the status file is not XML: {exc}") from None
    return status_dicts(root)


CLI = _Cli()
