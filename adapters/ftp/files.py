"""The account's files as the FTP client sees them: listings (LIST, NLST, MLSD, MLST),
facts (SIZE, MDTM), downloads from ``/out/`` (RETR) and deletion (DELE).

``/`` holds ``in`` and ``out``; ``/in`` the sender's FTP berichtsoorten; ``/in/<soort>``
the partial uploads (:mod:`adapters.ftp.partials`); ``/out`` the status files and
deliveries rendered from PostgreSQL (:mod:`routing.afleveren.ftp`). Invariant: nothing here
reads the host's file system by a client's path — only the virtual tree of the logged-in
OIN — and a partial upload that is being written cannot be deleted (450).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from adapters.ftp.datachannel import DataChannel
from adapters.ftp.listformat import listing_line, mdtm
from adapters.ftp.paths import Node


class FileCommands(DataChannel):
    """LIST, NLST, MLSD, MLST, SIZE, MDTM, RETR, DELE."""

    async def _entries(self, path: str, node: Node) -> list[tuple[str, bool, int, float]] | None:
        """(name, is_dir, size, mtime) of a directory's entries; None if not a directory."""
        now = time.time()
        if node.kind == "root":
            return [("in", True, 0, now), ("out", True, 0, now)]
        if node.kind == "in":
            return [(soort, True, 0, now) for soort in sorted(self.soorten())]
        if node.kind == "soort":
            infos = await asyncio.to_thread(self.area().list)
            prefix = path + "/"
            return sorted(
                (i.path[len(prefix) :], False, i.size, i.mtime)
                for i in infos
                if i.path.startswith(prefix) and "/" not in i.path[len(prefix) :]
            )
        if node.kind == "out":
            out = []
            box = self.outbox()
            for f in await box.list():
                size = len(await box.render(f))
                out.append((f.name, False, size, f.mtime.timestamp() if f.mtime else now))
            return out
        return None

    async def _listing(self, arg: str, style: str) -> None:
        if not await self.need_data():
            return
        target = "" if arg.startswith("-") else arg  # "LIST -la" from some clients
        got = await self.resolve(target)
        if got is None:
            return
        path, node = got
        entries = await self._entries(path, node)
        if entries is None:
            await self.refuse(550, "No such directory", "no_such_directory")
            return
        lines = [listing_line(style, *e) for e in entries]
        self.start_transfer(self.send_bytes("".join(lines).encode(), f"listing of {path}"))

    async def cmd_LIST(self, arg: str) -> None:
        await self._listing(arg, "list")

    async def cmd_NLST(self, arg: str) -> None:
        await self._listing(arg, "nlst")

    async def cmd_MLSD(self, arg: str) -> None:
        await self._listing(arg, "mlsd")

    async def cmd_MLST(self, arg: str) -> None:
        got = await self.resolve(arg)
        if got is None:
            return
        path, node = got
        if node.is_dir:
            fact = listing_line("mlsd", path, True, 0, time.time()).rstrip("\r\n")
        else:
            info = await self._file_info(path, node)
            if info is None:
                await self.refuse(550, "No such file", "no_such_file")
                return
            fact = listing_line("mlsd", path, False, *info).rstrip("\r\n")
        await self.send(250, f"Listing {path}\n {fact}\nEnd")

    async def _file_info(self, path: str, node: Node) -> tuple[int, float] | None:
        if node.kind == "upload":
            area = self.area()
            size = area.size(path)
            if size is None:
                return None
            return size, area.file(path).stat().st_mtime
        if node.kind == "outfile":
            assert node.name is not None
            box = self.outbox()
            f = await box.find(node.name)
            if f is None:
                return None
            return len(await box.render(f)), (f.mtime.timestamp() if f.mtime else time.time())
        return None

    async def cmd_SIZE(self, arg: str) -> None:
        await self._file_fact(arg, lambda size, _mtime: str(size))

    async def cmd_MDTM(self, arg: str) -> None:
        await self._file_fact(arg, lambda _size, mtime: mdtm(mtime))

    async def _file_fact(self, arg: str, fact: Callable[[int, float], str]) -> None:
        """213 with one fact (size or time) of the file ``arg``, or 550."""
        got = await self.resolve(arg)
        if got is None:
            return
        info = await self._file_info(*got)
        if info is None:
            await self.refuse(550, "No such file", "no_such_file")
        else:
            await self.send(213, fact(*info))

    # -- RETR, DELE ------------------------------------------------------------------------
    async def cmd_RETR(self, arg: str) -> None:
        if not await self.need_data():
            return
        got = await self.resolve(arg)
        if got is None:
            return
        path, node = got
        offset, self.rest = self.rest or 0, None
        if node.kind != "outfile" or node.name is None:
            await self.refuse(550, "No such file (downloads are in /out/)", "no_such_file")
            return
        box = self.outbox()
        f = await box.find(node.name)
        if f is None:
            await self.refuse(550, "No such file", "no_such_file")
            return
        data = await box.render(f)
        self.start_transfer(self.send_bytes(data[offset:], path))

    async def cmd_DELE(self, arg: str) -> None:
        got = await self.resolve(arg)
        if got is None:
            return
        path, node = got
        if node.kind == "upload":
            assert self.oin is not None
            if (self.oin, path) in self.s.busy:
                await self.refuse(450, "Upload in progress", "busy")
            elif await asyncio.to_thread(self.area().remove, path):
                await self.send(250, "Partial upload deleted")
            else:
                await self.refuse(550, "No such file", "no_such_file")
            return
        if node.kind == "outfile" and node.name is not None:
            box = self.outbox()
            if await box.find(node.name) is None:
                await self.refuse(550, "No such file", "no_such_file")
                return
            await box.delete(node.name)
            await self.send(250, "Deleted")
            return
        await self.refuse(550, "Cannot delete this", "delete_not_allowed")
