"""Benchmark: e-invoice validation with the official rules (UBL 2.1 XSD + SI-UBL 2.0).

    .venv/bin/python -m loadtests.validation [--seconds 10] [--workers N] [--json]

Documents: CEN's ``ubl-tc434-example1.xml`` (21 KB) and a generated 1 MB SI-UBL invoice
(the sample invoice with ~1400 lines, totals consistent). For each it measures, in the
same run:

* **bare lxml XSD**: :func:`validators.schemas.validate_document` against the UBL 2.1
  Invoice schema, one core (the floor: what the XSD step alone costs);
* **one core, profile**: :meth:`validators.profiles.Checker.check` with the SI-UBL 2.0
  profile in this process, with a breakdown (hardened parse, XSD, Saxon parse, rules,
  SVRL parse);
* **worker pool**: :class:`validators.pool.ValidationPool` sized to the cores (or
  ``--workers``), driven from an asyncio event loop with enough concurrency to keep every
  worker busy: invoices/s in total and per core, and the longest event-loop stall
  (a 1 ms ticker's worst lateness) while validating;
* **threads vs processes**: the same profile in 2 threads of one process, to show what
  the GIL does to saxonche;
* peak RSS of the worker processes with the 1 MB invoice.

Needs the official artefacts (``../shared/standards`` or ``$DIGIPOORT_STANDARDS``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from digipoort import xmlsafe
from digipoort.config import load_settings
from digipoort.devenv import find_standards, link_sample_artefacts, render_config
from digipoort.xmlsafe import XmlLimits
from validators.pool import ValidationPool
from validators.profiles import Checker, ProfileSpec, resolve
from validators.schemas import validate_document
from validators.schematron import parse_svrl, processor

LIMITS = XmlLimits(max_bytes=20 * 1024 * 1024, max_depth=256)
SAMPLE = Path(__file__).resolve().parent.parent / "validators" / "samples"


def big_invoice(target_bytes: int = 1024 * 1024) -> bytes:
    """The sample invoice with as many lines as fit in ``target_bytes``, totals right."""
    text = (SAMPLE / "digiinkoop-factuur.xml").read_text(encoding="utf-8")
    start = text.index("  <cac:InvoiceLine>")
    end = text.index("</Invoice>")
    line = text[start:end]
    count = max(1, (target_bytes - len(text)) // len(line) + 1)
    lines = "".join(
        line.replace("<cbc:ID>1</cbc:ID>", f"<cbc:ID>{i + 1}</cbc:ID>", 1) for i in range(count)
    )
    net = 249 * count
    tax = round(net * 0.21, 2)
    head = text[:start]  # the document totals; every line keeps its own 249.00
    head = head.replace(">249.00<", f">{net:.2f}<").replace(">52.29<", f">{tax:.2f}<")
    head = head.replace(">301.29<", f">{net + tax:.2f}<")
    tail = lines + text[end:]
    return (head + tail).encode("utf-8")


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, float, float]:
    """(calls/s wall, median ms wall, CPU ms per call) of ``fn`` run for about ``seconds``.

    On a shared machine the CPU time per call is the fair "per core" figure: calls per
    CPU-second = 1000 / CPU ms."""
    fn()
    times: list[float] = []
    cpu0 = time.process_time()
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(times) < 3:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    cpu = (time.process_time() - cpu0) / len(times) * 1000
    return len(times) / sum(times), statistics.median(times) * 1000, cpu


def children_cpu_seconds() -> float:
    """utime + stime of this process's live children (the pool's workers)."""
    import multiprocessing

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def breakdown(checker: Checker, spec: ProfileSpec, data: bytes, rounds: int) -> dict[str, float]:
    """Median ms per part of a profile check."""
    xsd = spec.xsd
    assert xsd is not None
    _, schema = checker.schema(xsd, xsd.paths[0])
    proc = processor()
    xslt = spec.schematron[0].paths[0]
    executable = checker.engine.compile(xslt)
    text = data.decode("utf-8")
    parts: dict[str, list[float]] = {
        k: [] for k in ("parse", "xsd", "saxon_parse", "rules", "svrl")
    }
    for _ in range(rounds):
        t0 = time.perf_counter()
        xmlsafe.parse(data, LIMITS)
        t1 = time.perf_counter()
        validate_document(data, schema, LIMITS)
        t2 = time.perf_counter()
        node = proc.parse_xml(xml_text=text)
        t3 = time.perf_counter()
        report = executable.transform_to_string(xdm_node=node)
        t4 = time.perf_counter()
        parse_svrl(report)
        t5 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[k].append(v * 1000)
    return {k: round(statistics.median(v), 2) for k, v in parts.items()}


async def idle_stall(seconds: float) -> float:
    """The longest event-loop stall with nothing to do (the machine's own scheduling
    noise, measured the same way): the baseline for the pool's figure."""
    worst = 0.0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - t - 0.001)
    return round(worst * 1000, 2)


async def pool_run(
    pool: ValidationPool, spec: ProfileSpec, data: bytes, seconds: float
) -> dict[str, float]:
    await pool.prepare(spec)
    # warm every worker (each compiles the profile on first use)
    await asyncio.gather(*(pool.check(spec, data, LIMITS) for _ in range(pool.workers * 2)))
    stall = 0.0
    running = True

    async def ticker() -> None:
        nonlocal stall
        while running:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            stall = max(stall, time.perf_counter() - t - 0.001)

    tick = asyncio.create_task(ticker())
    cpu0 = children_cpu_seconds()
    done = 0
    stop = time.perf_counter() + seconds
    start = time.perf_counter()

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await pool.check(spec, data, LIMITS)
            done += 1

    await asyncio.gather(*(client() for _ in range(pool.workers * 2)))
    elapsed = time.perf_counter() - start
    cpu = children_cpu_seconds() - cpu0
    running = False
    await tick
    return {
        "per_s": round(done / elapsed, 1),
        "worker_cpu_ms_per_invoice": round(cpu / max(done, 1) * 1000, 1),
        "per_cpu_second": round(done / cpu, 1) if cpu else 0.0,
        "per_s_per_core": round(done / elapsed / pool.workers, 1),
        "max_stall_ms": round(stall * 1000, 2),
    }


def threads_run(spec: ProfileSpec, data: bytes, seconds: float, threads: int) -> float:
    """Invoices/s with ``threads`` threads in this process (each its own Checker)."""
    checkers = [Checker() for _ in range(threads)]
    for c in checkers:
        c.prepare(spec)
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            checkers[i].check(spec, data, LIMITS)
            done[i] += 1

    start = time.perf_counter()
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return round(sum(done) / (time.perf_counter() - start), 1)


def worker_rss_kib() -> int:
    import multiprocessing

    total = 0
    for child in multiprocessing.active_children():
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        total = max(total, int(match.group(1)) if match else 0)
    return total


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    standards = find_standards()
    if standards is None:
        sys.exit("no standards release: set DIGIPOORT_STANDARDS (docs/validation.md)")
    with tempfile.TemporaryDirectory() as tmp:
        link_sample_artefacts(Path(tmp) / "standards", standards)
        (Path(tmp) / "digipoort.toml").write_text(render_config())
        settings = load_settings(Path(tmp) / "digipoort.toml")
        soort = next(b for b in settings.registry.berichtsoorten if b.name == "DigiInkoop-Factuur")
        assert soort.validation is not None
        spec = resolve(soort.validation, settings.resolve(settings.validation.artefacts_dir))
        docs = {
            "cen-example1 (21 KB)": (
                standards / "en16931-ubl/ubl/examples/ubl-tc434-example1.xml"
            ).read_bytes(),
            "si-ubl 1 MB": big_invoice(),
        }
        checker = Checker()
        t = time.perf_counter()
        checker.prepare(spec)
        compile_s = time.perf_counter() - t
        xsd = spec.xsd
        assert xsd is not None
        _, schema = checker.schema(xsd, xsd.paths[0])
        pool = ValidationPool(args.workers)
        result: dict[str, Any] = {
            "idle_event_loop_stall_ms": await idle_stall(min(args.seconds, 5.0)),
            "cores": os.cpu_count(),
            "loadavg_start": os.getloadavg()[0],
            "workers": pool.workers,
            "compile_profile_s": round(compile_s, 2),
            "documents": {},
        }
        try:
            for name, data in docs.items():
                seconds = args.seconds if len(data) < 100_000 else args.seconds * 2
                findings = checker.check(spec, data, LIMITS)
                lxml_rate, lxml_ms, lxml_cpu = rate(
                    lambda d=data: validate_document(d, schema, LIMITS), seconds / 2
                )
                one_rate, one_ms, one_cpu = rate(
                    lambda d=data: checker.check(spec, d, LIMITS), seconds
                )
                entry: dict[str, Any] = {
                    "bytes": len(data),
                    "refusing_findings": sorted({f.rule for f in findings if f.refusing}),
                    "bare_lxml_xsd_per_s": round(lxml_rate, 1),
                    "bare_lxml_xsd_ms": round(lxml_ms, 2),
                    "bare_lxml_xsd_cpu_ms": round(lxml_cpu, 2),
                    "profile_one_core_per_s": round(one_rate, 1),
                    "profile_one_core_ms": round(one_ms, 2),
                    "profile_one_core_cpu_ms": round(one_cpu, 2),
                    "breakdown_ms": breakdown(
                        checker, spec, data, 5 if len(data) > 100_000 else 30
                    ),
                    "pool": await pool_run(pool, spec, data, seconds),
                }
                if len(data) < 100_000:
                    entry["threads_2_per_s"] = threads_run(spec, data, seconds / 2, 2)
                else:
                    entry["worker_peak_rss_mib"] = round(worker_rss_kib() / 1024, 1)
                result["documents"][name] = entry
        finally:
            pool.shutdown()
        result["loadavg_end"] = os.getloadavg()[0]
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"cores {result['cores']}, workers {result['workers']}, load {result['loadavg_start']:.1f}"
        f"→{result['loadavg_end']:.1f}, profile compiled in {result['compile_profile_s']} s,"
        f" idle event-loop stall {result['idle_event_loop_stall_ms']} ms"
    )
    for name, e in result["documents"].items():
        lxml_, one = e["bare_lxml_xsd_per_s"], e["profile_one_core_per_s"]
        print(f"\n{name}: {e['bytes']} bytes, refusing rules {e['refusing_findings']}")
        print(
            f"  bare lxml XSD          {lxml_:>8}/s  ({e['bare_lxml_xsd_ms']} ms wall,"
            f" {e['bare_lxml_xsd_cpu_ms']} ms CPU)"
        )
        print(
            f"  profile, one core      {one:>8}/s  ({e['profile_one_core_ms']} ms wall,"
            f" {e['profile_one_core_cpu_ms']} ms CPU)"
        )
        print(f"  breakdown (ms)         {e['breakdown_ms']}")
        p = e["pool"]
        print(
            f"  worker pool            {p['per_s']:>8}/s  = {p['per_s_per_core']}/s per core;"
            f" {p['worker_cpu_ms_per_invoice']} ms worker CPU per invoice"
            f" = {p['per_cpu_second']}/CPU-s; longest event-loop stall {p['max_stall_ms']} ms"
        )
        if "threads_2_per_s" in e:
            print(f"  2 threads, 1 process   {e['threads_2_per_s']:>8}/s")
        if "worker_peak_rss_mib" in e:
            print(f"  worker peak RSS        {e['worker_peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
