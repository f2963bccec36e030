"""The account's virtual file system: path normalisation and classification, pure.

Nothing here maps a client's path onto the real file system. A path is normalised to an
absolute *virtual* path inside the account (``/``, ``/in``, ``/in/<berichtsoort>``,
``/in/<berichtsoort>/<file>``, ``/out``, ``/out/<file>``); partial uploads are stored
under a digest of that virtual path, status files and deliveries come from PostgreSQL.
So ``..``, absolute paths, symlinks or odd encodings cannot reach another account or the
host's files: there is no mapping to escape from.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_PATH = 1000
MAX_COMPONENT = 255
#: aanleverkenmerk is at most 40 characters (koppelvlak XSD), and it is the file name.
MAX_UPLOAD_NAME = 40
_UPLOAD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")


class PathRefused(Exception):
    """A path the account may not use; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def normalise(cwd: str, arg: str) -> str:
    """Resolve ``arg`` (absolute within the account, or relative to ``cwd``) to a
    normalised absolute virtual path. Raises PathRefused."""
    if len(arg) > MAX_PATH:
        raise PathRefused("path_too_long", "Path too long")
    if "\x00" in arg or "\\" in arg:
        raise PathRefused("path_bad_characters", "Path contains forbidden characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in arg):
        raise PathRefused("path_bad_characters", "Path contains forbidden characters")
    if unicodedata.normalize("NFC", arg) != arg:
        raise PathRefused("path_bad_encoding", "Path is not in Unicode NFC form")
    base = [] if arg.startswith("/") else [p for p in cwd.split("/") if p]
    for part in arg.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not base:
                raise PathRefused("path_traversal", "Path leaves the account")
            base.pop()
            continue
        if len(part) > MAX_COMPONENT:
            raise PathRefused("path_too_long", "Path component too long")
        if part.strip(" .") == "":
            raise PathRefused("path_bad_characters", "Path component is only dots or spaces")
        base.append(part)
    return "/" + "/".join(base)


@dataclass(frozen=True)
class Node:
    """What a virtual path names. ``kind``: root, in, soort, upload, out, outfile, none."""

    kind: str
    soort: str | None = None
    name: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind in ("root", "in", "soort", "out")


def classify(path: str, soorten: frozenset[str] | set[str]) -> Node:
    """Classify a normalised virtual path against the sender's FTP berichtsoorten."""
    parts = [p for p in path.split("/") if p]
    match parts:
        case []:
            return Node("root")
        case ["in"]:
            return Node("in")
        case ["in", soort] if soort in soorten:
            return Node("soort", soort)
        case ["in", soort, name] if soort in soorten:
            return Node("upload", soort, name)
        case ["out"]:
            return Node("out")
        case ["out", name]:
            return Node("outfile", name=name)
    return Node("none")


def check_upload_name(name: str) -> None:
    """The file name becomes the aanleverkenmerk: <= 40 characters, a safe alphabet."""
    if len(name) > MAX_UPLOAD_NAME:
        raise PathRefused(
            "name_too_long", f"File name longer than {MAX_UPLOAD_NAME} characters (aanleverkenmerk)"
        )
    if not _UPLOAD_NAME.fullmatch(name):
        raise PathRefused("name_not_allowed", "File name: letters, digits, '.', '_' and '-' only")


MIME_TYPES = {
    ".xml": "application/xml",
    ".xbrl": "application/xml",
    ".json": "application/json",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
}


#: leading bytes -> MIME type, for names without a known extension (the aanleverkenmerk
#: is the file name, so "K-2026-001" is a normal upload name)
_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
)
SNIFF_BYTES = 512
_MIME_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)


def sniff_mime_type(head: bytes) -> str | None:
    """The MIME type the first bytes of a document show, or None. XML: an optional BOM
    and white space, then ``<?xml`` or an element (``<`` + letter)."""
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if text.startswith(b"<?xml") or (len(text) > 1 and text[:1] == b"<" and text[1:2].isalpha()):
        return "application/xml"
    return None


def mime_type_for(name: str, head: bytes = b"") -> str:
    """By the name's extension; without a known one by the content (:func:`sniff_mime_type`
    of its first :data:`SNIFF_BYTES`); else ``application/octet-stream``."""
    dot = name.rfind(".")
    by_name = MIME_TYPES.get(name[dot:].lower()) if dot > 0 else None
    return by_name or sniff_mime_type(head) or "application/octet-stream"


def parse_mime_type(text: str) -> str | None:
    """``type/subtype`` as given to ``SITE MIME`` (no parameters), lower-cased; or None."""
    text = text.strip()
    return text.lower() if _MIME_TYPE.fullmatch(text) else None
