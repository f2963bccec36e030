"""``serve --processes N``: N gateway processes on one machine, one supervisor.

Each child is a complete ``digipoort serve`` with the same components; listening sockets
are opened with SO_REUSEPORT (only in the children: :func:`digipoort.app.shares_ports`
sees ``DIGIPOORT_WORKER_INDEX``), so the kernel spreads connections over the children, and
RabbitMQ spreads work messages over their consumers. Outside a supervisor every port is
bound exclusively, and before it starts the children the supervisor checks (binding
without SO_REUSEPORT) that the ports are free — so a second ``serve``, with or without
``--processes``, refuses to start instead of silently sharing the ports.

FTP is the exception: it runs in worker 0 only (:func:`worker_components`). Its control
port is bound exclusively and each session's passive data listener must be in the process
that holds the session, so it never shares its port; the other workers run the remaining
components. ``serve --components ftp --processes N`` (N > 1) is refused at start: the
other workers would have nothing to run.

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


#: Components that run in one worker process only (worker 0), never in the others.
SINGLE_PROCESS_COMPONENTS = frozenset({"ftp"})


def worker_components(components: Sequence[str], index: int) -> tuple[str, ...]:
    """The components worker ``index`` runs: all of them in worker 0, the others without
    the single-process ones (FTP)."""
    if index == 0:
        return tuple(components)
    return tuple(c for c in components if c not in SINGLE_PROCESS_COMPONENTS)


def check_plan(components: Sequence[str], processes: int) -> None:
    """Refuse a ``--processes`` that would leave workers with nothing to run."""
    if processes > 1 and not worker_components(components, 1):
        from digipoort.clikit import CliError

        single = ", ".join(sorted(SINGLE_PROCESS_COMPONENTS & set(components)))
        raise CliError(
            f"--processes {processes} with only {single}: {single} runs in one process "
            f"(it does not share its port); drop --processes or add other components",
            "usage",
            2,
        )


def supervise(child_args: Sequence[str], processes: int, components: Sequence[str]) -> int:
    """Run ``processes`` children of ``digipoort <child_args> --components ...`` (the
    components of :func:`worker_components`) until SIGTERM/SIGINT; the exit code."""
    check_plan(components, processes)
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="digipoort-metrics-"
    )
    for name in os.listdir(multiproc_dir):  # stale files of an earlier run
        if name.endswith(".db"):
            os.unlink(os.path.join(multiproc_dir, name))
    stopping = False

    def spawn(index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, CHILD_ENV: str(index), "PROMETHEUS_MULTIPROC_DIR": multiproc_dir}
        own = ",".join(worker_components(components, index))
        argv = [sys.executable, "-m", "digipoort.cli", *child_args, "--components", own]
        return subprocess.Popen(argv, env=env)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    children = [spawn(i) for i in range(processes)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "supervisor started",
        processes=processes,
        pids=[c.pid for c in children],
        single_process=sorted(SINGLE_PROCESS_COMPONENTS & set(components)),
    )
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
