"""Fixtures: one test PKI per run, one template database per run, and for each test that
asks for ``env`` its own database (cloned from the template) and its own RabbitMQ vhost,
dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from digipoort import logging as dlogging
from digipoort import provision
from digipoort.devenv import SAMPLE_PARTICIPANTS
from digipoort.pki.devpki import DevParticipant, create_dev_pki
from tests.support import PG_ADMIN, Env, create_env, create_template, destroy_env

dlogging.configure("warning", json=True)


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    create_dev_pki(d, [DevParticipant(oin=o, name=n) for o, n, _ in SAMPLE_PARTICIPANTS])
    return d


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def template_db() -> AsyncIterator[str]:
    name = f"dptest_tpl_{uuid.uuid4().hex[:10]}"
    await create_template(name)
    yield name
    await provision.drop_database(f"{PG_ADMIN}/{name}")


@pytest_asyncio.fixture(loop_scope="session")
async def env(
    tmp_path_factory: pytest.TempPathFactory, pki_dir: Path, template_db: str
) -> AsyncIterator[Env]:
    e = await create_env(tmp_path_factory.mktemp("env"), pki_dir, template_db)
    try:
        yield e
    finally:
        await destroy_env(e)
