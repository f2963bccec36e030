"""The REST API against its own OpenAPI 3.1 document with schemathesis: generated
requests (as a participant and as an operator, over real mutual TLS) never get a 5xx, and
every response matches the document (status code, content type, schema).

The default suite runs a few examples per operation; ``-m slow`` runs many more.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from portal.openapi import document
from tests.support import ALFA
from tests.test_portal_fixtures import OPERATOR, PortalRun, run  # noqa: F401

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def exercise(run: PortalRun, stem: str, examples: int) -> list[str]:
    """Every operation with ``examples`` generated cases; returns the failures."""
    pki = run.pki
    session = requests.Session()
    session.cert = (str(pki / f"{stem}.crt"), str(pki / f"{stem}.key"))
    session.verify = str(pki / "ca.crt")
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace our test CA
    token = session.get(run.url + "/api/v1/me", timeout=10).json()["csrf_token"]
    schema = schemathesis.openapi.from_dict(document(run.url))
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation: Any = result.ok()

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(), valid_token=st.booleans())
        def one(case: Any, valid_token: bool) -> None:
            headers = {"X-CSRF-Token": token} if valid_token else None
            response = case.call(
                base_url=run.url + "/api/v1",
                session=session,
                headers=headers,
                timeout=30,
                verify=session.verify,
                cert=session.cert,
            )
            case.validate_response(response, checks=CHECKS)

        one()
    return failures


async def check(run: PortalRun, examples: int) -> None:
    for stem in (ALFA, OPERATOR):
        failures = await asyncio.to_thread(exercise, run, stem, examples)
        assert not failures, "\n".join(failures[:10])


async def test_api_matches_its_openapi_document(run: PortalRun) -> None:
    await check(run, int(os.environ.get("PORTAL_SCHEMATHESIS_EXAMPLES", "6")))


@pytest.mark.slow
async def test_api_matches_its_openapi_document_long(run: PortalRun) -> None:
    await check(run, 200)


def test_document_is_openapi_3_1() -> None:
    doc = document("https://localhost:8444")
    assert doc["openapi"] == "3.1.0"
    assert Path(__file__).exists()
    schemathesis.openapi.from_dict(doc)  # loads: a valid document
