"""The validation artefacts directory: official releases installed as ``NAME/VERSION/``.

An operator installs a release (a zip or a folder, from a path or an ``http(s)`` URL)
with ``digipoort standards install NAME --from PATH_OR_URL [--sha256 HEX]``:

* the source is fetched into a temporary file (URLs: bounded size, no redirects to other
  schemes) and, with ``--sha256``, its checksum verified (a folder's checksum is over its
  files, see :func:`tree_sha256`);
* archives are unpacked member by member: absolute names, ``..`` components, links,
  devices and members outside the target are refused (the whole install fails), sizes and
  member counts are bounded (zip bombs);
* the version is ``--version``, else read from the release (``Schematron version 1.3.16``,
  ``SI-UBL 2.0 validation, version 2.0.3.12``, ``OASIS Universal Business Language (UBL)
  2.1``), else the install fails asking for ``--version``;
* the release lands in ``<artefacts_dir>/NAME/VERSION/`` atomically (a temporary sibling
  renamed into place), with a ``.release.json`` recording source, checksum and time.

Profiles in the registry name an artefact and a version; :func:`locate` finds the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "MANIFEST",
    "ArtefactError",
    "Installed",
    "detect_version",
    "install",
    "installed",
    "locate",
    "tree_sha256",
]

MANIFEST: Final = ".release.json"
MAX_RELEASE_BYTES: Final = 512 * 1024 * 1024
MAX_MEMBERS: Final = 20_000
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_VERSION_PATTERNS: Final = (
    re.compile(rb"Schematron version (\d+(?:\.\d+)+)"),
    re.compile(rb"validation, version (\d+(?:\.\d+)+)"),
    re.compile(rb"Universal Business Language \(UBL\) (\d+(?:\.\d+)+)"),
)
_VERSION_SUFFIXES: Final = (".xsl", ".xslt", ".sch", ".xsd")


class ArtefactError(Exception):
    """An install or lookup failed; the message says why (and names the file)."""


@dataclass(frozen=True)
class Installed:
    name: str
    version: str
    path: Path
    source: str | None
    sha256: str | None
    installed_at: str | None


def check_name(kind: str, value: str) -> str:
    if not _NAME.fullmatch(value) or value in (".", ".."):
        raise ArtefactError(f"{kind} {value!r}: use letters, digits, '.', '_' and '-' only")
    return value


def locate(artefacts_dir: Path, name: str, version: str, relative: str) -> Path:
    """The file ``relative`` of installed artefact ``name``/``version``; refuses paths
    leading out of the release."""
    root = artefacts_dir / check_name("artefact", name) / check_name("version", version)
    if not root.is_dir():
        raise ArtefactError(
            f"artefact {name} {version} is not installed in {artefacts_dir}"
            f" (digipoort standards install {name} --from ...)"
        )
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ArtefactError(f"{relative!r} lies outside artefact {name} {version}")
    if not target.is_file():
        raise ArtefactError(f"file {target} of artefact {name} {version} is missing")
    return target


def installed(artefacts_dir: Path) -> list[Installed]:
    """Every installed release, sorted by name and version."""
    result: list[Installed] = []
    if not artefacts_dir.is_dir():
        return result
    for name_dir in sorted(p for p in artefacts_dir.iterdir() if p.is_dir()):
        for version_dir in sorted(p for p in name_dir.iterdir() if p.is_dir()):
            if version_dir.name.startswith("."):
                continue
            meta: dict[str, str] = {}
            try:
                meta = json.loads((version_dir / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            result.append(
                Installed(
                    name_dir.name,
                    version_dir.name,
                    version_dir,
                    meta.get("source"),
                    meta.get("sha256"),
                    meta.get("installed_at"),
                )
            )
    return result


# --------------------------------------------------------------------------- install


def install(
    artefacts_dir: Path,
    name: str,
    source: str,
    *,
    sha256: str | None = None,
    version: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> Installed:
    """Install release ``source`` (folder, zip file or http(s) URL of a zip) as ``name``."""
    check_name("artefact", name)
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ArtefactError("--sha256 must be 64 hexadecimal digits")
    artefacts_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=artefacts_dir, prefix=".install-") as tmp:
        staging = Path(tmp) / "release"
        digest = _stage(source, staging, Path(tmp), timeout)
        if sha256 is not None and digest != sha256.lower():
            raise ArtefactError(f"checksum mismatch for {source}: got {digest}, expected {sha256}")
        release = _single_top_dir(staging)
        found = version or detect_version(release)
        if found is None:
            raise ArtefactError(f"cannot tell the version of {source}: give --version")
        check_name("version", found)
        (release / MANIFEST).write_text(
            json.dumps(
                {
                    "name": name,
                    "version": found,
                    "source": source,
                    "sha256": digest,
                    "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        target = artefacts_dir / name / found
        if target.exists():
            if not force:
                raise ArtefactError(f"{name} {found} is already installed at {target}")
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(release, target)
    return next(i for i in installed(artefacts_dir) if i.name == name and i.version == found)


def _stage(source: str, staging: Path, tmp: Path, timeout: float) -> str:
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        archive = tmp / "download.zip"
        _download(source, archive, timeout)
        return _unzip(archive, staging)
    if scheme not in ("", "file") and len(scheme) > 1:  # (one letter: a Windows drive)
        raise ArtefactError(f"unsupported source {source!r}: a folder, a zip or an http(s) URL")
    path = Path(urlsplit(source).path if scheme == "file" else source)
    if path.is_dir():
        digest = tree_sha256(path)
        _copy_tree(path, staging)
        return digest
    if path.is_file():
        return _unzip(path, staging)
    raise ArtefactError(f"source {path} does not exist")


def _download(url: str, target: Path, timeout: float) -> None:
    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as response, target.open("wb") as out:
            total = 0
            while chunk := response.read(1024 * 1024):
                total += len(chunk)
                if total > MAX_RELEASE_BYTES:
                    raise ArtefactError(f"{url}: larger than {MAX_RELEASE_BYTES} bytes")
                out.write(chunk)
    except ArtefactError:
        raise
    except Exception as exc:
        raise ArtefactError(f"cannot download {url}: {exc}") from None


def tree_sha256(folder: Path) -> str:
    """Checksum of a folder: SHA-256 over ``path\\0size\\0sha256\\n`` of each file, sorted."""
    outer = hashlib.sha256()
    for path in sorted(_files(folder)):
        rel = path.relative_to(folder).as_posix()
        inner = hashlib.sha256(path.read_bytes()).hexdigest()
        outer.update(f"{rel}\0{path.stat().st_size}\0{inner}\n".encode())
    return outer.hexdigest()


def _files(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        for f in files:
            p = Path(root) / f
            if p.is_file() and not p.is_symlink():
                yield p


def _copy_tree(source: Path, target: Path) -> None:
    count = total = 0
    for path in _files(source):
        count += 1
        total += path.stat().st_size
        if count > MAX_MEMBERS or total > MAX_RELEASE_BYTES:
            raise ArtefactError(f"{source}: too many or too large files")
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        dest.chmod(0o644)


def _unzip(archive: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with archive.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtefactError(f"{archive.name} is not a zip archive: {exc}") from None
    with zf:
        members = zf.infolist()
        if len(members) > MAX_MEMBERS:
            raise ArtefactError(f"{archive.name}: more than {MAX_MEMBERS} members")
        if sum(m.file_size for m in members) > MAX_RELEASE_BYTES:
            raise ArtefactError(f"{archive.name}: unpacks to more than {MAX_RELEASE_BYTES} bytes")
        target.mkdir(parents=True)
        root = target.resolve()
        for m in members:
            rel = _safe_member(m)
            if rel is None:
                continue
            dest = (root / rel).resolve()
            if not dest.is_relative_to(root) or dest == root:
                raise ArtefactError(f"{archive.name}: member {m.filename!r} leaves the release")
            if m.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, 1024 * 1024)
    return digest.hexdigest()


def _safe_member(m: zipfile.ZipInfo) -> PurePosixPath | None:
    name = m.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise ArtefactError(f"archive member {m.filename!r}: path traversal refused")
    mode = (m.external_attr >> 16) & 0o170000
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ArtefactError(f"archive member {m.filename!r}: links and devices are refused")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def _single_top_dir(staging: Path) -> Path:
    """A zip holding one top folder (``release-1.0/...``) is installed from that folder."""
    entries = [p for p in staging.iterdir() if not p.name.startswith("__MACOSX")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return staging


def detect_version(release: Path) -> str | None:
    """The version a release states about itself (see the module documentation)."""
    files = sorted(_files(release), key=lambda p: (len(p.relative_to(release).parts), p))
    for path in files:
        if path.suffix.lower() not in _VERSION_SUFFIXES:
            continue
        with path.open("rb") as fh:
            head = fh.read(8192)
        for pattern in _VERSION_PATTERNS:
            match = pattern.search(head)
            if match:
                return match.group(1).decode("ascii")
    return None
