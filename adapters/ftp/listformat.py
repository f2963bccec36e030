"""Listing lines and file facts for the FTP control and data connections: pure, no I/O.

One entry (name, is_dir, size, mtime) becomes a ``LIST`` line (``ls -l`` style), an ``NLST``
name or an RFC 3659 ``MLSD``/``MLST`` fact line; :func:`mdtm` is the ``MDTM`` time.
Invariant: every line ends in CRLF and all times are UTC; the name is written as given
(names come from the virtual tree, :mod:`adapters.ftp.paths`, never from the host).
"""

from __future__ import annotations

from datetime import UTC, datetime


def listing_line(style: str, name: str, is_dir: bool, size: int, mtime: float) -> str:
    """One directory entry in ``style`` "list", "nlst" or "mlsd", CRLF-terminated."""
    ts = datetime.fromtimestamp(mtime, UTC)
    if style == "nlst":
        return f"{name}\r\n"
    if style == "mlsd":
        kind = "dir" if is_dir else "file"
        return f"type={kind};size={size};modify={ts:%Y%m%d%H%M%S}; {name}\r\n"
    mode = "drwxr-x---" if is_dir else "-rw-r-----"
    return f"{mode} 1 ftp ftp {size:>12} {ts:%b %d %H:%M} {name}\r\n"


def mdtm(mtime: float) -> str:
    """``MDTM`` / RFC 3659 time-val: ``YYYYMMDDHHMMSS`` in UTC."""
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y%m%d%H%M%S")
