"""``serve --processes N``: N gateway processes on one machine, one supervisor.

Each child is a complete ``digipoort serve`` with the same components; listening sockets
are opened with SO_REUSEPORT (only in the children: :func:`digipoort.app.shares_ports`
sees ``DIGIPOORT_WORKER_INDEX``), so the kernel spreads connections over the children, and
RabbitMQ spreads work messages over their consumers. Outside a supervisor every port is
bound exclusively, and before it starts the children the supervisor checks (binding
without SO_REUSEPORT) that the ports are free — so a second ``serve``, with or without
``--processes``, refuses to start instead of silently sharing the ports.

Metrics use prometheus-client's multi-process mode (a shared directory), so a scrape of
any child reports all of them. SIGTERM/SIGINT to the supervisor is forwarded to every
child, each drains its in-flight work, and the supervisor exits 0 when all did. A child
that dies unexpectedly is restarted (at most once a second).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

import structlog
from prometheus_client import multiprocess

log = structlog.get_logger(__name__)

CHILD_ENV = "DIGIPOORT_WORKER_INDEX"


def supervise(child_args: Sequence[str], processes: int) -> int:
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="digipoort-metrics-"
    )
    for name in os.listdir(multiproc_dir):  # stale files of an earlier run
        if name.endswith(".db"):
            os.unlink(os.path.join(multiproc_dir, name))
    stopping = False

    def spawn(index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, CHILD_ENV: str(index), "PROMETHEUS_MULTIPROC_DIR": multiproc_dir}
        return subprocess.Popen([sys.executable, "-m", "digipoort.cli", *child_args], env=env)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    children = [spawn(i) for i in range(processes)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("supervisor started", processes=processes, pids=[c.pid for c in children])
    last_restart = 0.0
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        for i, child in enumerate(children):
            if child.pid != pid:
                continue
            child.returncode = os.waitstatus_to_exitcode(status)
            # its live gauges ("livemax", "livesum") must not linger
            multiprocess.mark_process_dead(pid, multiproc_dir)  # type: ignore[no-untyped-call]
            if not stopping:
                log.error("worker process died; restarting", index=i, code=child.returncode)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - last_restart)))
                last_restart = time.monotonic()
                children[i] = spawn(i)
        if stopping and all(c.returncode is not None for c in children):
            break
    codes = [c.returncode for c in children]
    log.info("supervisor stopped", exit_codes=codes)
    return 0 if all(c == 0 for c in codes) else 1
