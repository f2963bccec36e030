"""``digipoort standards install/list``: official releases into the artefacts directory,
from a folder, a zip and a local HTTP server; checksums; archives that try to escape."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from digipoort.cli import main
from digipoort.devenv import find_standards, render_config
from validators.artefacts import (
    MANIFEST,
    ArtefactError,
    detect_version,
    install,
    installed,
    locate,
    tree_sha256,
)

STANDARDS = find_standards()
pytestmark = pytest.mark.skipif(STANDARDS is None, reason="no ../shared/standards")


def zip_folder(folder: Path, target: Path, *, top: str | None = None) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                zf.write(path, f"{top}/{rel}" if top else rel)
    return target


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def si_ubl_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert STANDARDS is not None
    d = tmp_path_factory.mktemp("zips")
    return zip_folder(STANDARDS / "si-ubl-2.0", d / "si-ubl-2.0.zip", top="validation-2.0.3.12")


@pytest.fixture(scope="module")
def http_root(si_ubl_zip: Path) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server serving the zip's folder; yields its URL and the paths asked."""
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            asked.append(self.path)

    handler = functools.partial(Handler, directory=str(si_ubl_zip.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_versions_are_read_from_the_releases() -> None:
    assert STANDARDS is not None
    assert detect_version(STANDARDS / "ubl-2.1") == "2.1"
    assert detect_version(STANDARDS / "en16931-ubl") == "1.3.16"
    assert detect_version(STANDARDS / "si-ubl-2.0") == "2.0.3.12"


def test_install_a_folder(tmp_path: Path) -> None:
    assert STANDARDS is not None
    done = install(tmp_path, "ubl-2.1", str(STANDARDS / "ubl-2.1"))
    assert (done.name, done.version) == ("ubl-2.1", "2.1")
    assert done.path == tmp_path / "ubl-2.1" / "2.1"
    assert (done.path / "xsd" / "maindoc" / "UBL-Invoice-2.1.xsd").is_file()
    assert done.sha256 == tree_sha256(STANDARDS / "ubl-2.1")
    meta = json.loads((done.path / MANIFEST).read_text())
    assert meta["source"] == str(STANDARDS / "ubl-2.1")
    assert locate(tmp_path, "ubl-2.1", "2.1", "xsd/maindoc/UBL-Order-2.1.xsd").is_file()
    with pytest.raises(ArtefactError, match="already installed"):
        install(tmp_path, "ubl-2.1", str(STANDARDS / "ubl-2.1"))
    assert [(i.name, i.version) for i in installed(tmp_path)] == [("ubl-2.1", "2.1")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".install-")]


def test_install_a_zip_with_its_checksum(tmp_path: Path, si_ubl_zip: Path) -> None:
    done = install(tmp_path, "si-ubl-2.0", str(si_ubl_zip), sha256=sha256(si_ubl_zip).upper())
    assert done.version == "2.0.3.12"  # the single top folder of the zip is the release
    assert (done.path / "xsl" / "si-ubl-2.0.xsl").is_file()
    assert done.sha256 == sha256(si_ubl_zip)


def test_a_wrong_checksum_installs_nothing(tmp_path: Path, si_ubl_zip: Path) -> None:
    with pytest.raises(ArtefactError, match="checksum mismatch"):
        install(tmp_path, "si-ubl-2.0", str(si_ubl_zip), sha256="0" * 64)
    assert installed(tmp_path) == []
    with pytest.raises(ArtefactError, match="64 hexadecimal"):
        install(tmp_path, "si-ubl-2.0", str(si_ubl_zip), sha256="abc")


def test_install_from_a_local_http_server(
    tmp_path: Path, si_ubl_zip: Path, http_root: tuple[str, list[str]]
) -> None:
    base, asked = http_root
    url = f"{base}/{si_ubl_zip.name}"
    done = install(tmp_path, "si-ubl-2.0", url, sha256=sha256(si_ubl_zip))
    assert (done.path / "xsl" / "si-ubl-2.0.xsl").read_bytes() == (
        STANDARDS / "si-ubl-2.0" / "xsl" / "si-ubl-2.0.xsl"  # type: ignore[operator]
    ).read_bytes()
    assert any(si_ubl_zip.name in p for p in asked)
    with pytest.raises(ArtefactError, match="cannot download"):
        install(tmp_path, "other", f"{base}/missing.zip", version="1")


def evil_zip(path: Path, name: str, *, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("release/ok.xsl", "<x/>")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd" if symlink else "pwned")
    return path


@pytest.mark.parametrize(
    "member",
    ["../evil.txt", "release/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt", "..\\evil.txt"],
)
def test_path_traversal_in_archives_is_refused(tmp_path: Path, member: str) -> None:
    target = tmp_path / "artefacts"
    archive = evil_zip(tmp_path / "evil.zip", member)
    with pytest.raises(ArtefactError, match="traversal"):
        install(target, "evil", str(archive), version="1")
    assert installed(target) == []
    assert not (tmp_path / "evil.txt").exists()
    assert not list(tmp_path.rglob("evil.txt"))


def test_links_in_archives_are_refused(tmp_path: Path) -> None:
    archive = evil_zip(tmp_path / "link.zip", "release/passwd", symlink=True)
    with pytest.raises(ArtefactError, match="links"):
        install(tmp_path / "artefacts", "evil", str(archive), version="1")


def test_bad_names_sources_and_versions(tmp_path: Path) -> None:
    assert STANDARDS is not None
    for name in ("../x", "a/b", "", ".."):
        with pytest.raises(ArtefactError):
            install(tmp_path, name, str(STANDARDS / "ubl-2.1"))
    with pytest.raises(ArtefactError, match="does not exist"):
        install(tmp_path, "x", str(tmp_path / "missing"))
    with pytest.raises(ArtefactError, match="unsupported"):
        install(tmp_path, "x", "ftp://127.0.0.1/x.zip")
    (tmp_path / "noversion").mkdir()
    (tmp_path / "noversion" / "a.txt").write_text("x")
    with pytest.raises(ArtefactError, match="--version"):
        install(tmp_path / "art", "x", str(tmp_path / "noversion"))
    (tmp_path / "notzip.zip").write_text("not a zip")
    with pytest.raises(ArtefactError, match="not a zip"):
        install(tmp_path / "art", "x", str(tmp_path / "notzip.zip"), version="1")


def test_locate_refuses_paths_out_of_the_release(tmp_path: Path) -> None:
    assert STANDARDS is not None
    install(tmp_path, "ubl-2.1", str(STANDARDS / "ubl-2.1"))
    with pytest.raises(ArtefactError, match="outside"):
        locate(tmp_path, "ubl-2.1", "2.1", "../../../etc/passwd")
    with pytest.raises(ArtefactError, match="missing"):
        locate(tmp_path, "ubl-2.1", "2.1", "xsd/maindoc/Nope.xsd")
    with pytest.raises(ArtefactError, match="not installed"):
        locate(tmp_path, "ubl-2.1", "9.9", "xsd/maindoc/UBL-Invoice-2.1.xsd")


def test_cli_install_and_list(tmp_path: Path, si_ubl_zip: Path) -> None:
    config = tmp_path / "digipoort.toml"
    config.write_text(render_config())
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "standards",
            "install",
            "si-ubl-2.0",
            "--from",
            str(si_ubl_zip),
            "--sha256",
            sha256(si_ubl_zip),
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "installed si-ubl-2.0 2.0.3.12" in result.output
    assert (tmp_path / "standards" / "si-ubl-2.0" / "2.0.3.12").is_dir()
    result = runner.invoke(main, ["standards", "list", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    assert (entry["name"], entry["version"], entry["sha256"]) == (
        "si-ubl-2.0",
        "2.0.3.12",
        sha256(si_ubl_zip),
    )
    bad = runner.invoke(
        main,
        [
            "standards",
            "install",
            "x",
            "--from",
            str(si_ubl_zip),
            "--sha256",
            "1" * 64,
            "--config",
            str(config),
        ],
    )
    assert bad.exit_code != 0 and "checksum mismatch" in bad.output


def test_dev_init_installs_the_sample_artefacts(tmp_path: Path) -> None:
    from digipoort.devenv import init_dev_env

    written = init_dev_env(tmp_path / "dev")
    names = {(i.name, i.version) for i in installed(tmp_path / "dev" / "standards")}
    assert names == {("ubl-2.1", "2.1"), ("en16931-ubl", "1.3.16"), ("si-ubl-2.0", "2.0.3.12")}
    assert tmp_path / "dev" / "standards" / "ubl-2.1" / "2.1" in written
    again = init_dev_env(tmp_path / "dev")
    assert not [p for p in again if "standards" in p.parts]
