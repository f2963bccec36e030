"""XSD per berichtsoort: schemas compiled once, documents validated with line numbers.

Schemas are found by file name in the packaged ``validators/xsd/`` and in any extra
directories (the config adds ``xsd/`` next to the config file). Imports and includes are
resolved only from those directories; anything else (network, other files) is refused.
lxml schema objects are not thread-safe: the gateway uses them from one event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lxml import etree

from digipoort.xmlsafe import XmlLimits, XmlRejected, parse
from validators.content import Violation

PACKAGED = Path(__file__).resolve().parent / "xsd"
MAX_VIOLATIONS = 100


class _LocalResolver(etree.Resolver):
    def __init__(self, dirs: Sequence[Path]) -> None:
        super().__init__()
        self._dirs = dirs

    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:
        name = Path(system_url.rsplit("/", 1)[-1]).name
        for d in self._dirs:
            candidate = d / name
            if candidate.is_file():
                return self.resolve_filename(str(candidate), context)
        raise XmlRejected("schema", f"schema import {system_url!r} not found locally")


class SchemaRegistry:
    def __init__(self, search_dirs: Sequence[Path] = ()) -> None:
        self._dirs = [PACKAGED, *search_dirs]
        self._cache: dict[str, etree.XMLSchema] = {}

    def find(self, name: str) -> Path:
        safe = Path(name).name
        for d in self._dirs:
            if (d / safe).is_file():
                return d / safe
        raise FileNotFoundError(f"schema {name!r} not found")

    def get(self, name: str) -> etree.XMLSchema:
        schema = self._cache.get(name)
        if schema is None:
            path = self.find(name)
            parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
            parser.resolvers.add(_LocalResolver(self._dirs))
            schema = etree.XMLSchema(etree.parse(str(path), parser))
            self._cache[name] = schema
        return schema


def validate_document(
    data: bytes, schema: etree.XMLSchema | None, limits: XmlLimits = XmlLimits()
) -> list[Violation]:
    """Well-formedness with the hardened parser, then the XSD (if any)."""
    try:
        tree = parse(data, limits)
    except XmlRejected as exc:
        return [Violation(exc.code, exc.message, exc.line)]
    if schema is None or schema.validate(tree):
        return []
    return [
        Violation("schema", err.message, err.line)
        for err in list(schema.error_log)[:MAX_VIOLATIONS]
    ]
