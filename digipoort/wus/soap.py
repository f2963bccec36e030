"""SOAP 1.1 + WS-Addressing envelope handling for the Digipoort koppelvlak WUS.

Pure functions, no I/O. Parsing is hardened: DTDs are refused before libxml2 sees the
document, entities are never resolved, nothing is fetched from the network, and the
element depth, the namespace declarations and the attributes per element are bounded
(before any canonicalization). See ``docs/wus-security.md``.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Final, Literal

from lxml import etree

from digipoort import xmlsafe

__all__ = [
    "AANLEVERSERVICE_NS",
    "AFLEVERSERVICE_NS",
    "DS_NS",
    "EXC_C14N_NS",
    "FAULT_DETAIL_ELEMENTS",
    "KOPPELVLAK_NS",
    "OPERATIONS",
    "OPHAALSERVICE_NS",
    "SOAP11_NS",
    "SOAP12_NS",
    "STATUSINFORMATIESERVICE_NS",
    "WCF_PORT_SUFFIX",
    "WSA_ANONYMOUS",
    "WSA_FAULT_ACTION",
    "WSA_NONE",
    "WSA_NS",
    "WSSE_NS",
    "WSU_NS",
    "ParsedEnvelope",
    "SoapError",
    "WusOperation",
    "build_envelope",
    "build_fault",
    "new_message_id",
    "operation_for_action",
    "operations_by_action",
    "parse_envelope",
]

# --------------------------------------------------------------------------- namespaces

SOAP11_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS: Final = "http://www.w3.org/2003/05/soap-envelope"
WSA_NS: Final = "http://www.w3.org/2005/08/addressing"
WSSE_NS: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DS_NS: Final = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N_NS: Final = "http://www.w3.org/2001/10/xml-exc-c14n#"
XML_NS: Final = "http://www.w3.org/XML/1998/namespace"

KOPPELVLAK_NS: Final = "http://logius.nl/digipoort/koppelvlakservices/1.2/"
AANLEVERSERVICE_NS: Final = "http://logius.nl/digipoort/wus/2.0/aanleverservice/1.2/"
STATUSINFORMATIESERVICE_NS: Final = (
    "http://logius.nl/digipoort/wus/2.0/statusinformatieservice/1.2/"
)
OPHAALSERVICE_NS: Final = "http://logius.nl/digipoort/wus/2.0/ophaalservice/1.2/"
AFLEVERSERVICE_NS: Final = "http://logius.nl/digipoort/wus/2.0/afleverservice/1.2/"

WSA_ANONYMOUS: Final = "http://www.w3.org/2005/08/addressing/anonymous"
WSA_NONE: Final = "http://www.w3.org/2005/08/addressing/none"
#: WS-Addressing's generic fault action, used when the operation is unknown.
WSA_FAULT_ACTION: Final = "http://www.w3.org/2005/08/addressing/fault"

# Clark-notation tags used throughout.
SOAP_ENVELOPE: Final = f"{{{SOAP11_NS}}}Envelope"
SOAP_HEADER: Final = f"{{{SOAP11_NS}}}Header"
SOAP_BODY: Final = f"{{{SOAP11_NS}}}Body"
SOAP_FAULT: Final = f"{{{SOAP11_NS}}}Fault"
SOAP_MUST_UNDERSTAND: Final = f"{{{SOAP11_NS}}}mustUnderstand"
WSSE_SECURITY: Final = f"{{{WSSE_NS}}}Security"
WSU_ID: Final = f"{{{WSU_NS}}}Id"

#: WS-Addressing 1.0 message addressing properties that may appear as SOAP headers.
WSA_HEADER_NAMES: Final = frozenset(
    {"To", "From", "ReplyTo", "FaultTo", "Action", "MessageID", "RelatesTo"}
)
_WSA_EPR_HEADERS: Final = frozenset({"From", "ReplyTo", "FaultTo"})

# --------------------------------------------------------------------------- operations


#: WCF (svcutil, .NET) derives an operation's action from the WSDL's portType name
#: (``AanleverService_V1_2``) instead of the ``soapAction`` of the binding; both forms
#: are accepted, and the answer uses the form of the request (docs/wus.md).
WCF_PORT_SUFFIX: Final = "_V1_2"


@dataclass(frozen=True, slots=True)
class WusOperation:
    """One koppelvlak operation and the WS-Addressing actions that belong to it.

    ``port`` is the path segment of the action URIs: the published form
    (``AanleverService``) or WCF's portType form (``AanleverService_V1_2``); see
    :meth:`forms`.
    """

    service_ns: str
    port: str  # e.g. "AanleverService" (the path segment in the action URIs)
    name: str  # e.g. "aanleveren"
    request_element: str  # local name in KOPPELVLAK_NS
    response_element: str
    fault_element: str

    @property
    def request_action(self) -> str:
        return f"{self.service_ns}{self.port}/{self.name}Request"

    @property
    def response_action(self) -> str:
        return f"{self.service_ns}{self.port}/{self.name}Response"

    @property
    def fault_action(self) -> str:
        return f"{self.service_ns}{self.port}/{self.name}/Fault/"

    def forms(self) -> tuple[WusOperation, WusOperation]:
        """This operation in the published and in WCF's action form."""
        published = self.port.removesuffix(WCF_PORT_SUFFIX)
        return replace(self, port=published), replace(self, port=published + WCF_PORT_SUFFIX)


def operations_by_action(operations: Iterable[WusOperation]) -> Mapping[str, WusOperation]:
    """Operations keyed by every accepted request action; each value answers in the form
    of its key (its response and fault actions use the same port segment)."""
    return MappingProxyType({form.request_action: form for op in operations for form in op.forms()})


def _ops(ns: str, port: str, fault: str, names: tuple[str, ...]) -> list[WusOperation]:
    return [WusOperation(ns, port, n, f"{n}Request", f"{n}Response", fault) for n in names]


_ALL_OPERATIONS: Final = (
    # From aanleverservice-1.2.wsdl.
    WusOperation(
        AANLEVERSERVICE_NS,
        "AanleverService",
        "aanleveren",
        "aanleverRequest",
        "aanleverResponse",
        "aanleverFault",
    ),
    # From statusinformatieservice-1.2.wsdl.
    *_ops(
        STATUSINFORMATIESERVICE_NS,
        "StatusinformatieService",
        "statusinformatieFault",
        (
            "getStatussenProces",
            "getNieuweStatussenProces",
            "getNieuweStatussen",
            "getProcessen",
            "getBerichtsoorten",
        ),
    ),
    # No WSDL in the specs for these two: actions follow the same pattern (inferred).
    *_ops(
        OPHAALSERVICE_NS,
        "OphaalService",
        "ophaalFault",
        (
            "getBerichten",
            "getNieuweBerichten",
            "getBerichtenLijst",
            "getNieuweBerichtenLijst",
            "getBerichtenKenmerk",
            "getNieuweBerichtenKenmerk",
        ),
    ),
    WusOperation(
        AFLEVERSERVICE_NS,
        "AfleverService",
        "afleveren",
        "afleverRequest",
        "afleverResponse",
        "afleverFault",
    ),
)

#: Operations keyed by their request wsa:Action (== SOAPAction), in both forms.
OPERATIONS: Final[Mapping[str, WusOperation]] = operations_by_action(_ALL_OPERATIONS)

#: Fault detail element names defined in the koppelvlak XSD.
FAULT_DETAIL_ELEMENTS: Final = frozenset(
    {"aanleverFault", "statusinformatieFault", "afleverFault", "zetStatusFault", "ophaalFault"}
)


def operation_for_action(action: str) -> WusOperation | None:
    """Return the operation whose request action is ``action``, in that action's form
    (None if unknown)."""
    return OPERATIONS.get(action)


# --------------------------------------------------------------------------- errors


class SoapError(Exception):
    """The message is not an acceptable SOAP 1.1 / WS-Addressing envelope.

    ``code`` is a short machine-readable reason, ``message`` a human-readable one that
    never contains key material and at most short excerpts of the input.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class ParsedEnvelope:
    """A structurally valid SOAP 1.1 envelope with its WS-Addressing properties."""

    root: etree._Element
    header: etree._Element
    body: etree._Element
    payload: etree._Element  # the single element child of Body
    to: str
    action: str
    message_id: str
    reply_to: str | None  # wsa:ReplyTo/wsa:Address (always anonymous when present)
    relates_to: str | None
    # WS-Addressing header elements (direct children of Header) by local name.
    wsa_headers: Mapping[str, etree._Element]


_PROLOG_WINDOW: Final = 64 * 1024
_PROLOG_RE: Final = re.compile(rb"(?:[ \t\r\n]+|<\?.*?\?>|<!--.*?-->)*", re.DOTALL)
_XML_DECL_ENCODING_RE: Final = re.compile(
    rb"<\?xml[ \t\r\n][^>]*?encoding[ \t\r\n]*=[ \t\r\n]*[\"']([A-Za-z0-9._-]*)[\"']"
)
_ACCEPTED_ENCODINGS: Final = frozenset({b"utf-8", b"utf8", b"us-ascii", b"ascii"})
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_MAX_EXCERPT: Final = 80
#: Bounds before any c14n (whose cost grows with elements x namespaces in scope): real
#: SOAP stacks send a few dozen declarations and a handful of attributes per element.
MAX_NAMESPACE_DECLARATIONS: Final = 256
MAX_ATTRIBUTES: Final = 64
#: wsa:MessageID becomes the envelope's berichtkenmerk (berichtkenmerkType: at most 256).
MAX_MESSAGE_ID: Final = 256


def _excerpt(value: str) -> str:
    """Shorten attacker-controlled text before it goes into an error message."""
    return value if len(value) <= _MAX_EXCERPT else value[:_MAX_EXCERPT] + "..."


def _is_blank(text: str | None) -> bool:
    return text is None or not text.strip()


def _check_prolog(data: bytes) -> None:
    """Refuse DOCTYPEs and non-UTF-8 documents before libxml2 parses anything."""
    head = data[:_PROLOG_WINDOW]
    if head.startswith(_UTF8_BOM):
        head = head[len(_UTF8_BOM) :]
    elif head[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head[:4]:
        raise SoapError("unsupported_encoding", "only UTF-8 encoded messages are accepted")
    decl = _XML_DECL_ENCODING_RE.match(head)
    if decl is not None and decl.group(1).lower() not in _ACCEPTED_ENCODINGS:
        raise SoapError("unsupported_encoding", "only UTF-8 encoded messages are accepted")
    match = _PROLOG_RE.match(head)
    end = match.end() if match is not None else 0
    if head.startswith(b"<!DOCTYPE", end):
        raise SoapError("dtd_forbidden", "DOCTYPE/DTD declarations are not allowed")
    if end == len(head) and len(data) > _PROLOG_WINDOW:
        raise SoapError("malformed", "XML prolog too long")


@lru_cache(maxsize=16)
def _depth_probe(max_depth: int) -> etree.XPath:
    # True iff an element exists at depth max_depth + 1 (the root element is depth 1).
    return etree.XPath("boolean(" + "/*" * (max_depth + 1) + ")")


def _parse_xml(data: bytes, *, max_depth: int, huge_text: bool) -> etree._Element:
    _check_prolog(data)
    try:
        xmlsafe.check_namespace_declarations(data, MAX_NAMESPACE_DECLARATIONS)
    except xmlsafe.XmlRejected as exc:
        raise SoapError(exc.code, exc.message) from None
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=huge_text,
        remove_comments=False,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        reason = str(exc.msg or exc)
        if "Excessive depth" in reason:
            raise SoapError("too_deep", "document nesting too deep") from None
        raise SoapError("malformed", f"not well-formed XML: {_excerpt(reason)}") from None
    docinfo = root.getroottree().docinfo
    if (
        docinfo.internalDTD is not None
        or docinfo.externalDTD is not None
        or docinfo.public_id
        or docinfo.system_url
    ):
        raise SoapError("dtd_forbidden", "DOCTYPE/DTD declarations are not allowed")
    if _depth_probe(max_depth)(root):
        raise SoapError("too_deep", f"document nesting deeper than {max_depth}")
    try:
        xmlsafe.check_attributes(root, MAX_ATTRIBUTES)
    except xmlsafe.XmlRejected as exc:
        raise SoapError(exc.code, exc.message) from None
    return root


def _element_children(parent: etree._Element) -> list[etree._Element]:
    return [child for child in parent if isinstance(child.tag, str)]


def _check_blank_content(parent: etree._Element, where: str, code: str) -> None:
    if not _is_blank(parent.text) or any(not _is_blank(c.tail) for c in parent):
        raise SoapError(code, f"unexpected text content in {where}")


def _split_envelope(root: etree._Element) -> tuple[etree._Element | None, etree._Element]:
    if root.tag != SOAP_ENVELOPE:
        raise SoapError("not_soap11", "root element is not a SOAP 1.1 Envelope")
    header: etree._Element | None = None
    body: etree._Element | None = None
    for child in _element_children(root):
        if child.tag == SOAP_HEADER:
            if header is not None:
                raise SoapError("bad_structure", "more than one soap:Header")
            if body is not None:
                raise SoapError("bad_structure", "soap:Header after soap:Body")
            header = child
        elif child.tag == SOAP_BODY:
            if body is not None:
                raise SoapError("multiple_bodies", "more than one soap:Body")
            body = child
        else:
            raise SoapError("bad_structure", "unexpected child element of soap:Envelope")
    _check_blank_content(root, "soap:Envelope", "bad_structure")
    if body is None:
        raise SoapError("missing_body", "soap:Body missing")
    return header, body


def _single_payload(body: etree._Element) -> etree._Element:
    children = _element_children(body)
    if len(children) != 1:
        raise SoapError(
            "bad_body", f"soap:Body must contain exactly one element, not {len(children)}"
        )
    _check_blank_content(body, "soap:Body", "bad_body")
    return children[0]


def _must_understand(element: etree._Element) -> bool:
    return (element.get(SOAP_MUST_UNDERSTAND) or "").strip() in ("1", "true")


def _simple_value(element: etree._Element, missing_code: str) -> str:
    name = etree.QName(element).localname
    if _element_children(element):
        raise SoapError("bad_wsa_header", f"wsa:{name} must have simple content")
    value = (element.text or "").strip()
    if not value:
        raise SoapError(missing_code, f"wsa:{name} is empty")
    return value


def _epr_address(element: etree._Element) -> str:
    name = etree.QName(element).localname
    addresses = [c for c in _element_children(element) if c.tag == f"{{{WSA_NS}}}Address"]
    if len(addresses) != 1:
        raise SoapError("bad_wsa_header", f"wsa:{name} must contain exactly one wsa:Address")
    return _simple_value(addresses[0], "bad_wsa_header")


def _collect_headers(
    header: etree._Element | None, *, allow_unknown: bool
) -> dict[str, etree._Element]:
    found: dict[str, etree._Element] = {}
    if header is None:
        return found
    _check_blank_content(header, "soap:Header", "bad_structure")
    for child in _element_children(header):
        qname = etree.QName(child)
        if qname.namespace == WSA_NS and qname.localname in WSA_HEADER_NAMES:
            if qname.localname in found:
                raise SoapError("duplicate_header", f"wsa:{qname.localname} occurs more than once")
            found[qname.localname] = child
        elif child.tag == WSSE_SECURITY:
            continue  # cardinality is the WS-Security verifier's business
        elif _must_understand(child):
            raise SoapError("not_understood", f"header {_excerpt(child.tag)} not understood")
        elif not allow_unknown:
            raise SoapError("unknown_header", f"header {_excerpt(child.tag)} not allowed")
    return found


def _required(found: Mapping[str, etree._Element], name: str, code: str) -> str:
    element = found.get(name)
    if element is None:
        raise SoapError(code, f"wsa:{name} header missing")
    return _simple_value(element, code)


def _check_epr_headers(found: Mapping[str, etree._Element]) -> str | None:
    reply_to: str | None = None
    for name in sorted(_WSA_EPR_HEADERS & found.keys()):
        address = _epr_address(found[name])
        if name == "ReplyTo":
            if address != WSA_ANONYMOUS:
                raise SoapError("reply_to_not_anonymous", "wsa:ReplyTo must be anonymous")
            reply_to = address
        elif address not in (WSA_ANONYMOUS, WSA_NONE):
            raise SoapError("wsa_address_not_allowed", f"wsa:{name} must be anonymous or none")
    return reply_to


def parse_envelope(
    data: bytes,
    *,
    max_depth: int = 64,
    allow_unknown_headers: bool = False,
    allow_huge_text: bool = False,
) -> ParsedEnvelope:
    """Parse and structurally validate a SOAP 1.1 envelope with WS-Addressing headers.

    Raises :class:`SoapError`. ``allow_huge_text`` lifts libxml2's 10 MB limit on a single
    text node (needed for berichtInhoud payloads above ~7 MiB); DTDs stay forbidden and
    depth stays bounded, but the caller must bound the input size.
    Custom headers are refused unless ``allow_unknown_headers`` (Digipoort forbids them);
    unknown headers with mustUnderstand="1" are always refused.
    """
    if not isinstance(data, bytes):
        raise SoapError("malformed", "message must be bytes")
    if max_depth < 3:
        raise ValueError("max_depth must be at least 3")
    root = _parse_xml(data, max_depth=max_depth, huge_text=allow_huge_text)
    header, body = _split_envelope(root)
    payload = _single_payload(body)
    found = _collect_headers(header, allow_unknown=allow_unknown_headers)
    to = _required(found, "To", "missing_wsa_to")
    action = _required(found, "Action", "missing_wsa_action")
    message_id = _required(found, "MessageID", "missing_wsa_messageid")
    if len(message_id) > MAX_MESSAGE_ID:
        raise SoapError(
            "message_id_too_long", f"wsa:MessageID is longer than {MAX_MESSAGE_ID} characters"
        )
    relates_to = (
        _simple_value(found["RelatesTo"], "bad_wsa_header") if "RelatesTo" in found else None
    )
    reply_to = _check_epr_headers(found)
    if header is None:  # unreachable: wsa:To was found inside it
        raise SoapError("missing_wsa_to", "soap:Header missing")
    return ParsedEnvelope(
        root=root,
        header=header,
        body=body,
        payload=payload,
        to=to,
        action=action,
        message_id=message_id,
        reply_to=reply_to,
        relates_to=relates_to,
        wsa_headers=MappingProxyType(found),
    )


# --------------------------------------------------------------------------- building


def new_message_id() -> str:
    """A fresh WS-Addressing message id (``urn:uuid:...``)."""
    return f"urn:uuid:{uuid.uuid4()}"


def new_wsu_id(prefix: str) -> str:
    """A fresh, document-unique wsu:Id value (an NCName)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def _wsa_element(header: etree._Element, name: str, value: str) -> etree._Element:
    if not value:
        raise ValueError(f"wsa:{name} must not be empty")
    element = etree.SubElement(header, f"{{{WSA_NS}}}{name}", {WSU_ID: new_wsu_id(name)})
    element.text = value
    return element


def build_envelope(
    body_payload: etree._Element,
    *,
    action: str,
    to: str,
    message_id: str | None = None,
    relates_to: str | None = None,
    reply_to_anonymous: bool = False,
) -> etree._Element:
    """Build a SOAP 1.1 envelope around a (deep-copied) payload with WS-Addressing headers.

    Every WS-Addressing header and the Body get a wsu:Id so that they can be signed.
    """
    root = etree.Element(SOAP_ENVELOPE, nsmap={"soapenv": SOAP11_NS, "wsa": WSA_NS, "wsu": WSU_NS})
    header = etree.SubElement(root, SOAP_HEADER)
    _wsa_element(header, "To", to)
    _wsa_element(header, "MessageID", message_id or new_message_id())
    _wsa_element(header, "Action", action)
    if relates_to is not None:
        _wsa_element(header, "RelatesTo", relates_to)
    if reply_to_anonymous:
        reply_to = etree.SubElement(header, f"{{{WSA_NS}}}ReplyTo", {WSU_ID: new_wsu_id("ReplyTo")})
        etree.SubElement(reply_to, f"{{{WSA_NS}}}Address").text = WSA_ANONYMOUS
    body = etree.SubElement(root, SOAP_BODY, {WSU_ID: new_wsu_id("Body")})
    payload = copy.deepcopy(body_payload)
    payload.tail = None
    body.append(payload)
    return root


# Characters that cannot appear in an XML 1.0 document.
_XML_INVALID_CHARS: Final = re.compile(
    "[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_FOUTBESCHRIJVING_MAX: Final = 1_048_576
_FOUTCODE_MAX: Final = 20
_XML_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _xml_text(value: str) -> str:
    return _XML_INVALID_CHARS.sub("\ufffd", value)


def build_fault(
    faultcode: Literal["soapenv:Client", "soapenv:Server"],
    faultstring: str,
    detail_element_name: str,
    foutcode: str,
    foutbeschrijving: str,
    *,
    action: str | None = None,
    relates_to: str | None = None,
    message_id: str | None = None,
    faultactor: str | None = "Verantwoordingsplichtige",
) -> bytes:
    """Serialize an (unsigned) Digipoort SOAP fault, shaped like the observed ones.

    ``detail_element_name`` is one of :data:`FAULT_DETAIL_ELEMENTS` (e.g. "aanleverFault");
    ``action`` is normally the operation's fault action (``WusOperation.fault_action``);
    without one (request not understood) WS-Addressing's generic fault action is used.
    ``relates_to`` is the request's MessageID, if it had a usable one.
    """
    if faultcode not in ("soapenv:Client", "soapenv:Server"):
        raise ValueError("faultcode must be soapenv:Client or soapenv:Server")
    if detail_element_name not in FAULT_DETAIL_ELEMENTS:
        raise ValueError(f"unknown fault detail element {detail_element_name!r}")
    if not foutcode or len(foutcode) > _FOUTCODE_MAX:
        raise ValueError("foutcode must be 1-20 characters")
    root = etree.Element(SOAP_ENVELOPE, nsmap={"soapenv": SOAP11_NS, "wsa": WSA_NS})
    header = etree.SubElement(root, SOAP_HEADER)
    etree.SubElement(header, f"{{{WSA_NS}}}To").text = WSA_ANONYMOUS
    etree.SubElement(header, f"{{{WSA_NS}}}MessageID").text = message_id or new_message_id()
    etree.SubElement(header, f"{{{WSA_NS}}}Action").text = _xml_text(action or WSA_FAULT_ACTION)
    if relates_to:
        etree.SubElement(header, f"{{{WSA_NS}}}RelatesTo").text = _xml_text(relates_to)
    fault = etree.SubElement(etree.SubElement(root, SOAP_BODY), SOAP_FAULT)
    etree.SubElement(fault, "faultcode").text = faultcode
    etree.SubElement(fault, "faultstring").text = _xml_text(faultstring)
    if faultactor:
        etree.SubElement(fault, "faultactor").text = _xml_text(faultactor)
    detail = etree.SubElement(fault, "detail")
    kv_fault = etree.SubElement(
        detail, f"{{{KOPPELVLAK_NS}}}{detail_element_name}", nsmap={"fault": KOPPELVLAK_NS}
    )
    etree.SubElement(kv_fault, f"{{{KOPPELVLAK_NS}}}foutcode").text = _xml_text(foutcode)
    etree.SubElement(kv_fault, f"{{{KOPPELVLAK_NS}}}foutbeschrijving").text = _xml_text(
        foutbeschrijving[:_FOUTBESCHRIJVING_MAX]
    )
    return _XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)
