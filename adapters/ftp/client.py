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
from digipoort.pki import certificate_file_oin, client_ssl_context

__all__ = ["CLI", "FtpUploadError", "FtpsClient"]

BLOCK = 1024 * 1024
_KENMERK = re.compile(r"kenmerk ([0-9a-f-]{36})")


class FtpUploadError(Exception):
    pass


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
        self.context = client_ssl_context(cert, key, ca)
        self.oin = oin_of(cert)
        self.timeout = timeout
        self.ftp: ftplib.FTP_TLS | None = None

    def connect(self) -> ftplib.FTP_TLS:
        ftp = _ReusingFTP_TLS(context=self.context, timeout=self.timeout)
        ftp.connect(self.host, self.port)
        ftp.auth()
        ftp.login(self.oin, "")
        ftp.prot_p()
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
                raise FtpUploadError(str(exc)) from None
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
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )

        if ontvanger or bijlagen:
            raise FtpUploadError("FTP carries one file per envelope (no --ontvanger/--bijlage)")
        host, port = _host_port(url)
        client = FtpsClient(host, port, cert, key, ca)
        size = file.stat().st_size
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task(file.name, total=size)

            def advance(n: int) -> None:
                bar.update(task, advance=n)

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

    def status(self, *, url: str, cert: Path, key: Path, ca: Path, kenmerk: str) -> str:
        host, port = _host_port(url)
        client = FtpsClient(host, port, cert, key, ca)
        ftp = client.connect()
        try:
            names = [n for n in ftp.nlst("/out") if kenmerk in n and n.endswith(".status.xml")]
            if not names:
                raise FtpUploadError(f"no status file for {kenmerk}")
            chunks: list[bytes] = []
            ftp.retrbinary(f"RETR /out/{names[0]}", chunks.append)
            return b"".join(chunks).decode()
        finally:
            client.close()


CLI = _Cli()
