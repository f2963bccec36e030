"""Prometheus metrics of the FTP koppelvlak (``digipoort_ftp_*``). Labels are bounded."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SESSIONS = Counter(
    "digipoort_ftp_sessions_total",
    "FTP control connections by outcome (authenticated, refused, error)",
    ["outcome"],
)
ACTIVE_SESSIONS = Gauge("digipoort_ftp_active_sessions", "Open FTP control connections")
REFUSED = Counter(
    "digipoort_ftp_refused_total",
    "FTP refusals by reason (every refusal carries an FTP reply code)",
    ["reason"],
)
UPLOAD_BYTES = Counter("digipoort_ftp_upload_bytes_total", "Bytes received in STOR/APPE")
DOWNLOAD_BYTES = Counter("digipoort_ftp_download_bytes_total", "Bytes sent in RETR/LIST")
UPLOADS = Counter(
    "digipoort_ftp_uploads_total",
    "Upload outcomes (accepted, refused, incomplete, aborted, too_large, error)",
    ["outcome"],
)
RESUMES = Counter("digipoort_ftp_resumes_total", "Uploads continued with REST or APPE")
PARTIALS_EXPIRED = Counter("digipoort_ftp_partials_expired_total", "Partial uploads expired")
