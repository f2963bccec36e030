"""The template-based response signer (adapters/wus/response_signing.py, issue 15 item 4):
its answers verify with our verifier and with xmlsec1, carry exactly what the generic
``sign_envelope(build_envelope(...))`` carries, and a tampered answer fails."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from lxml import etree

from adapters.wus.response_signing import ResponseSigner
from digipoort.wus.soap import WSA_ANONYMOUS, build_envelope, parse_envelope
from digipoort.wus.wssign import sign_envelope
from digipoort.wus.wsverify import verify_envelope
from tests.test_wssecurity import (
    ACTION,
    ID_ARGS,
    KOPPELVLAK_NS,
    NOW,
    NS,
    Keys,
    _payload,
    _xmlsec1,
    keys,  # noqa: F401  (module fixture)
    needs_xmlsec1,
    pem_files,  # noqa: F401  (module fixture)
)

RELATES = "urn:uuid:<&>\r request"


def _structure(data: bytes) -> list[tuple[str, str | None, dict[str, str]]]:
    """Tags, texts and attributes in document order, without ids and volatile values."""
    volatile = {"MessageID", "DigestValue", "SignatureValue"}
    out: list[tuple[str, str | None, dict[str, str]]] = []
    for el in etree.fromstring(data).iter():
        if not isinstance(el.tag, str):
            continue
        name = etree.QName(el).localname
        attrs = {
            etree.QName(k).localname: v
            for k, v in el.attrib.items()
            if etree.QName(k).localname != "Id" and k != "URI"
        }
        out.append((el.tag, None if name in volatile else el.text, attrs))
    return out


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_template_answer_verifies_and_matches_the_generic_one(
    keys: Keys,  # noqa: F811
    algorithm: str,
) -> None:
    signer = ResponseSigner(keys.key, keys.cert)
    data = signer.sign(
        _payload(),
        action=ACTION,
        relates_to=RELATES,
        algorithm=algorithm,
        now=NOW,  # type: ignore[arg-type]
    )
    parsed = parse_envelope(data)
    verified = verify_envelope(parsed, now=NOW + timedelta(seconds=1))
    assert verified.signed_parts == {"Timestamp", "To", "MessageID", "Action", "RelatesTo", "Body"}
    assert verified.algorithm == f"rsa-{algorithm}"
    assert parsed.wsa_headers["RelatesTo"].text == RELATES
    assert parsed.wsa_headers["To"].text == WSA_ANONYMOUS
    assert parsed.payload.findtext(f"{{{KOPPELVLAK_NS}}}berichtsoort") == "Omzetbelasting"

    generic = sign_envelope(
        build_envelope(_payload(), action=ACTION, to=WSA_ANONYMOUS, relates_to=RELATES),
        keys.key,
        keys.cert,
        algorithm=algorithm,  # type: ignore[arg-type]
        now=NOW,
    )
    assert _structure(data) == _structure(generic)
    # Security is the first header, as in the generic answer
    header = etree.fromstring(data).find("s:Header", NS)
    assert header is not None and etree.QName(header[0]).localname == "Security"


def test_every_answer_is_fresh_and_tampering_is_caught(keys: Keys) -> None:  # noqa: F811
    signer = ResponseSigner(keys.key, keys.cert)
    one = signer.sign(_payload(), action=ACTION, relates_to="urn:uuid:a", now=NOW)
    two = signer.sign(_payload(), action=ACTION, relates_to="urn:uuid:a", now=NOW)
    assert parse_envelope(one).message_id != parse_envelope(two).message_id
    tampered = one.replace(b"Omzetbelasting", b"Omzetbelastinx")
    with pytest.raises(Exception, match="digest_mismatch"):
        verify_envelope(parse_envelope(tampered), now=NOW)


def test_payload_using_the_envelope_prefixes_is_signed_the_generic_way(
    keys: Keys,  # noqa: F811
) -> None:
    payload = etree.Element(
        f"{{{KOPPELVLAK_NS}}}answer",
        nsmap={"wsu": NS["wsu"], None: KOPPELVLAK_NS},  # type: ignore[dict-item]
    )
    payload.set(f"{{{NS['wsu']}}}Created", "x")
    data = ResponseSigner(keys.key, keys.cert).sign(
        payload, action=ACTION, relates_to=None, now=NOW
    )
    verified = verify_envelope(parse_envelope(data), now=NOW)
    assert "Body" in verified.signed_parts


@needs_xmlsec1
@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_xmlsec1_verifies_the_template_answer(
    keys: Keys,  # noqa: F811
    pem_files: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    algorithm: str,
) -> None:
    cert, _key = pem_files
    signed = tmp_path / "answer.xml"
    signed.write_bytes(
        ResponseSigner(keys.key, keys.cert).sign(
            _payload(),
            action=ACTION,
            relates_to=RELATES,
            algorithm=algorithm,
            now=NOW,  # type: ignore[arg-type]
        )
    )
    result = _xmlsec1("--verify", "--pubkey-cert-pem", cert, *ID_ARGS, signed)
    assert result.returncode == 0, result.stderr
    assert "SignedInfo References (ok/all): 6/6" in result.stderr
    tampered = tmp_path / "tampered.xml"
    tampered.write_bytes(signed.read_bytes().replace(b"Omzetbelasting", b"Omzetbelastinx"))
    assert _xmlsec1("--verify", "--pubkey-cert-pem", cert, *ID_ARGS, tampered).returncode != 0
