"""Validation worker processes: profiles run off the event loop, one Saxon per process.

``saxonche`` holds the GIL for the whole transformation (a thread running the rules stops
every other Python thread, the event loop included), so profile validation runs in a
:class:`~concurrent.futures.ProcessPoolExecutor` of ``spawn``-ed processes, one per core by
default. Each worker keeps its own :class:`~validators.profiles.Checker` (compiled XSDs and
stylesheets, compiled on first use and kept for the life of the worker). The event loop
only pickles the document to a worker and the findings back.

A worker whose gateway process disappears (SIGKILL) ends itself within a second.
One pool serves every gateway in a process (:func:`shared_pool`); a broken pool (a worker
died) is replaced on the next call, and the call that saw it fails (the stage records a
technical problem, 321).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from digipoort.xmlsafe import XmlLimits
from validators.findings import Finding
from validators.profiles import Checker, ProfileSpec

__all__ = ["ValidationPool", "shared_pool"]

_checker: Checker | None = None
#: how often a worker checks that the gateway process that started it is still alive
PARENT_POLL_SECONDS = 1.0


def _init_worker(parent: int) -> None:
    """A worker ends itself when its gateway process is gone (killed with SIGKILL, say):
    no orphaned Saxon processes holding memory."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _local_checker() -> Checker:
    global _checker
    if _checker is None:
        _checker = Checker()
    return _checker


def _prepare(spec: ProfileSpec) -> int:
    _local_checker().prepare(spec)
    return os.getpid()


def _check(spec: ProfileSpec, data: bytes, limits: XmlLimits) -> list[Finding]:
    return _local_checker().check(spec, data, limits)


class ValidationPool:
    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(os.getpid(),),
                )
            return self._executor

    def _broken(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)

    async def prepare(self, spec: ProfileSpec) -> None:
        """Compile the profile in one worker: proves every file compiles. The other
        workers compile it on first use (a worker keeps what it compiled), so a cold start
        with several profiles spreads the compiling over the workers instead of queueing
        every profile in front of the first documents."""
        loop = asyncio.get_running_loop()
        executor = self._pool()
        try:
            await loop.run_in_executor(executor, _prepare, spec)
        except BrokenProcessPool:
            self._broken(executor)
            raise

    async def check(self, spec: ProfileSpec, data: bytes, limits: XmlLimits) -> list[Finding]:
        loop = asyncio.get_running_loop()
        executor = self._pool()
        try:
            return await loop.run_in_executor(executor, _check, spec, data, limits)
        except BrokenProcessPool:
            self._broken(executor)
            raise

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


_shared: dict[int, ValidationPool] = {}
_shared_lock = threading.Lock()


def shared_pool(workers: int = 0) -> ValidationPool:
    """The process-wide pool with ``workers`` processes (0 = one per core)."""
    with _shared_lock:
        pool = _shared.get(workers)
        if pool is None:
            pool = _shared[workers] = ValidationPool(workers)
        return pool
