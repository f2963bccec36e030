"""The pure parts of the SMTP adapter: MIME parsing, the subject convention, S/MIME."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.smtp.codes import REFUSALS, MailRefused
from adapters.smtp.mime import ParsedMail, parse_mail, safe_filename
from adapters.smtp.subject import format_subject, parse_subject

ALFA = "00000099100000010000"


def sample(parts: int = 1) -> bytes:
    m = EmailMessage()
    m["Subject"] = f"[V={ALFA}][A=00000099200000050000][K=ref-1]"
    m["Message-ID"] = "<id@x>"
    m.set_content("body")
    for i in range(parts):
        m.add_attachment(b"<a/>", maintype="text", subtype="xml", filename=f"d{i}.xml")
    return m.as_bytes(policy=policy.SMTP)


def test_attachments_in_order() -> None:
    p = parse_mail(sample(3))
    assert p.inhoud.bestandsnaam == "d0.xml" and [b.bestandsnaam for b in p.bijlagen] == [
        "d1.xml",
        "d2.xml",
    ]
    assert p.subject.k == "ref-1" and p.message_id == "id@x"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (sample(0), "no_attachment"),
        (sample(150), "too_many_parts"),
        (b"Subject: [V=1]\rBcc: x\r\n\r\nbody", "header_injection"),
        (b"X: " + b"a" * 70000 + b"\r\n\r\n", "header_too_large"),
        (sample().replace(b"Subject:", b"Subject: [V=x]\r\nSubject:"), "bad_subject"),
        (
            b"Subject: [V=1]\r\nContent-Type: multipart/mixed\r\n\r\n--x\r\n",
            "malformed_mime",
        ),
    ],
)
def test_refusals(data: bytes, reason: str) -> None:
    with pytest.raises(MailRefused) as exc:
        parse_mail(data, max_parts=100)
    assert exc.value.reason == reason


def test_subject() -> None:
    f = parse_subject(f"[V={ALFA}][A=DOUANE][K=k1][S=0] vrije tekst")
    assert (f.v, f.a, f.k, f.s) == (ALFA, "DOUANE", "k1", "0")
    for bad in ("", "[A=x]", "[V=1][V=2]", f"[V={ALFA}][K={'x' * 41}]"):
        with pytest.raises(MailRefused):
            parse_subject(bad)
    with pytest.raises(MailRefused) as exc:
        parse_subject(f"[V={ALFA}]\r\nBcc: x")
    assert exc.value.reason == "header_injection"
    assert parse_subject(format_subject("1", "2\r\n]x", "k")).a == "2x"


def test_filenames() -> None:
    assert safe_filename("../../etc/passwd", 1) == "passwd"
    assert safe_filename("C:\\x\\a.xml", 1) == "a.xml"
    assert safe_filename(None, 3) == "bijlage-3"
    assert len(safe_filename("a" * 200 + ".xml", 1)) == 80


def test_every_reply_is_well_formed() -> None:
    for reason, r in REFUSALS.items():
        line = MailRefused(reason, "detail\r\nX").reply()
        assert line.startswith(f"{r.code} {r.enhanced} ") and "\r" not in line and "\n" not in line


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        result = parse_mail(data, max_parts=20)
    except MailRefused as exc:
        assert exc.reason in REFUSALS
    else:
        assert isinstance(result, ParsedMail) and result.attachments


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_mail(data: st.DataObject) -> None:
    mail = bytearray(sample(2))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(mail) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            mail[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            mail[pos:pos] = data.draw(
                st.sampled_from([b"\r\n", b"--", b"\r", b"=?utf-8?q?=0D=0A?=", b"\x00", b";"])
            )
        else:
            del mail[pos : pos + data.draw(st.integers(1, 20))]
    try:
        result = parse_mail(bytes(mail), max_parts=20)
    except MailRefused as exc:
        assert exc.reason in REFUSALS
    else:
        assert result.subject.v and result.attachments


def test_return_mail_subject_on_the_subject_line() -> None:
    """The longest subject (K of 40) has no white space to fold at: it stays on the
    ``Subject:`` line instead of being moved to a continuation line."""
    import uuid
    from datetime import UTC, datetime

    from adapters.smtp.returns import ReturnStatus, render_return_mail

    k = "k" * 40
    row = {
        "status_id": 7, "kenmerk": uuid.uuid4(), "code": "400",
        "tijdstempel": datetime.now(UTC), "omschrijving": "Afgeleverd",
        "recipient_oin": None, "foutcode": None, "foutbeschrijving": None, "details": None,
        "sender_oin": ALFA, "aanleverkenmerk": k, "berichtsoort": "Douane-Uitvoer",
    }  # fmt: skip
    mail = render_return_mail(ReturnStatus(row), gateway_oin="0" * 20, domain="d.test")
    subject = f"Subject: [V={'0' * 20}][A={ALFA}][K={k}]\r\n".encode()
    assert subject in mail
    assert parse_subject(subject.decode()[9:].strip()).k == k


@pytest.mark.parametrize(
    "subject",
    [
        f"[V={ALFA}][K={'k' * 41}]",
        f"[V={ALFA}][K={'k' * 100}]",  # before: longer than the field pattern, dropped
        f"[V={ALFA}][A=x][K=abc",  # unterminated: before, free text
        f"[V={ALFA}][A={'a' * 81}]",
    ],
)
def test_subject_fields_too_long_or_broken_are_refused(subject: str) -> None:
    with pytest.raises(MailRefused) as info:
        parse_subject(subject)
    assert info.value.reason == "bad_subject" and info.value.reply().startswith("554 5.6.0")


def test_no_exception_class_names_in_replies() -> None:
    head = f"Subject: [V={ALFA}]\r\nMIME-Version: 1.0\r\n".encode()
    no_boundary = head + b"Content-Type: multipart/mixed\r\n\r\nx\r\n"
    bad_base64 = head + (
        b'Content-Type: application/xml\r\nContent-Disposition: attachment; filename="d"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nQUJD*$%\r\n"
    )
    replies = []
    for data in (no_boundary, bad_base64):
        with pytest.raises(MailRefused) as info:
            parse_mail(data)
        replies.append(info.value.reply())
    assert replies == [
        "554 5.6.0 Malformed MIME: multipart without boundary",
        "554 5.6.0 Malformed MIME: invalid base64 characters",
    ]
