"""zetStatus over WUS (``/wus/2.0/statusservice/1.2``): a recipient reports its own
processing status; only the recipient of that kenmerk may, codes 500–999 only."""

from __future__ import annotations

from uuid import UUID, uuid4

import aiohttp
import pytest
from lxml import etree

from adapters.wus.client import WusClient, WusFault
from adapters.wus.wsdl import STATUSSERVICE_PATH
from adapters.wus.zetstatus import ZET_STATUS
from digipoort.pki import client_ssl_context
from digipoort.wus.soap import KOPPELVLAK_NS
from routing.statusreports import build_zet_status
from tests.support import ALFA, BELASTINGDIENST, BETA, Env, aanlevering

KV = f"{{{KOPPELVLAK_NS}}}"
COMPONENTS = ("intake", "sweeper", "validator", "router", "wus")


def client(env: Env, stem: str) -> WusClient:
    pki = env.dir / "pki"
    return WusClient(
        env.settings.wus.public_url, pki / f"{stem}.crt", pki / f"{stem}.key", pki / "ca.crt"
    )


async def zet_status(c: WusClient, kenmerk: str, code: str, **kw: str) -> etree._Element:
    payload = etree.fromstring(build_zet_status(kenmerk, code, **kw))
    return await c.call(STATUSSERVICE_PATH, ZET_STATUS.request_action, payload)


async def delivered(env: Env) -> UUID:
    gw = await env.start_gateway(components=COMPONENTS)
    assert gw.intake is not None
    kenmerk = (await gw.intake.aanleveren(aanlevering("Omzetbelasting"))).kenmerk
    await env.wait_status(kenmerk, "400", recipient=BELASTINGDIENST)
    return kenmerk


async def test_recipient_reports_status(env: Env) -> None:
    kenmerk = await delivered(env)
    async with client(env, BELASTINGDIENST) as bd:
        answer = await zet_status(bd, str(kenmerk), "500")
        assert answer.tag == KV + "zetStatusResponse"
        assert answer.findtext(KV + "kenmerk") == str(kenmerk)
        assert answer.findtext(KV + "statuscode") == "500"
        await zet_status(
            bd, str(kenmerk), "510", foutcode="UVP100", foutbeschrijving="fout", details="regel 3"
        )
    history = await env.history(kenmerk)
    mine = [s for s in history if s.recipient_oin == BELASTINGDIENST]
    assert [s.code for s in mine][-2:] == ["500", "510"]
    assert mine[-1].foutcode == "UVP100" and mine[-1].details == "regel 3"
    # the sender sees it in its history over the statusinformatieservice
    async with client(env, ALFA) as alfa:
        seen = await alfa.status("getStatussenProces", kenmerk=str(kenmerk))
    assert [s["statuscode"] for s in seen][-2:] == ["500", "510"]


async def test_only_the_recipient_may_report_and_nothing_leaks(env: Env) -> None:
    kenmerk = await delivered(env)
    texts = []
    async with client(env, ALFA) as sender, client(env, BETA) as other:
        for c, k in ((sender, str(kenmerk)), (other, str(kenmerk)), (other, str(uuid4()))):
            with pytest.raises(WusFault) as fault:
                await zet_status(c, k, "500")
            assert fault.value.foutcode == "ZSS150"
            texts.append(fault.value.foutbeschrijving)
    assert len(set(texts)) == 1
    assert "500" not in [s.code for s in await env.history(kenmerk)]


async def test_gateway_codes_are_refused(env: Env) -> None:
    kenmerk = await delivered(env)
    async with client(env, BELASTINGDIENST) as bd:
        for code in ("400", "410", "99", "1000"):
            with pytest.raises(WusFault) as fault:
                await zet_status(bd, str(kenmerk), code)
            assert fault.value.foutcode == "ZSS100"
    codes = [s.code for s in await env.history(kenmerk)]
    assert codes.count("400") == 1 and "410" not in codes


async def test_statusservice_wsdl(env: Env) -> None:
    await env.start_gateway(components=("intake", "wus"))
    pki = env.dir / "pki"
    ssl = client_ssl_context(pki / f"{ALFA}.crt", pki / f"{ALFA}.key", pki / "ca.crt")
    url = env.settings.wus.public_url + STATUSSERVICE_PATH
    async with aiohttp.ClientSession() as http, http.get(url + "?wsdl", ssl=ssl) as response:
        assert response.status == 200
        assert ZET_STATUS.request_action.encode() in await response.read()
