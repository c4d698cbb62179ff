"""Parsing HL7 messages beside the MLLP listener, in worker processes.

A `ParseWorker` is one child process joined to the listener by a socket pair that the listener's
event loop reads and writes itself: a chunk goes out, its results come back, and no thread of the
listener stands in between. A worker that dies fails the chunks it holds at once (its socket
closes), so the listener can parse them itself and start another.

On the socket, each way, a chunk is an 8-byte length and a pickle.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import pickle  # nosec B403: only between the listener and its own child process
import signal
import socket
import subprocess  # nosec B404: starts this interpreter, see ParseWorker.start
import sys
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from ingest.hl7_map import AdtMessage, Hl7Rejection, MessageHeader, parse_adt
from parcours.runtime import collect_seldom

log = logging.getLogger(__name__)

HEADER_BYTES = 8
_REJECTION_FIELDS = ("ack_code", "reason", "text", "segment", "field_no", "component", "error_code")


class ParseWorkerGone(RuntimeError):
    """The parse worker exited or its socket closed."""


def parse_one(payload: bytes, header: MessageHeader, tz: tzinfo) -> AdtMessage | Hl7Rejection:
    """`parse_adt`, with any refusal (or reader bug) returned as an Hl7Rejection."""
    try:
        return parse_adt(payload, tz, header)
    except Hl7Rejection as exc:
        return exc
    except Exception as exc:  # any reader bug is this message's AE, not a crash
        log.exception("unexpected error reading an HL7 message")
        return Hl7Rejection(
            "AE", "unparsable", f"message illisible: {type(exc).__name__}", "MSH", 0, 0, "100"
        )


def parse_many(
    payloads: list[bytes], headers: list[MessageHeader], tz: tzinfo
) -> list[tuple[str, Any]]:
    """Parse a chunk; refusals travel as their fields (an exception with dataclass fields does
    not survive pickling)."""
    out: list[tuple[str, Any]] = []
    for payload, header in zip(payloads, headers, strict=True):
        got = parse_one(payload, header, tz)
        if isinstance(got, Hl7Rejection):
            out.append(("err", tuple(getattr(got, f) for f in _REJECTION_FIELDS)))
        else:
            out.append(("ok", got))
    return out


def results_of(raw: list[tuple[str, Any]]) -> list[AdtMessage | Hl7Rejection]:
    """The messages and refusals `parse_many` sent."""
    return [r if kind == "ok" else Hl7Rejection(*r) for kind, r in raw]


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(HEADER_BYTES, "big") + data


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    """`n` bytes from `sock`, or None once it is closed."""
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            return None
        buf += got
    return bytes(buf)


def serve_fd(fd: str, tz_name: str) -> None:
    """The child's entry point: `serve` on the socket its parent passed as descriptor `fd`.
    Ctrl-C reaches the whole process group: the child leaves it to the listener, and ends when
    the listener closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(socket.socket(fileno=int(fd)), tz_name)


def serve(sock: socket.socket, tz_name: str) -> None:
    """The child's loop: parse each chunk received, until the socket closes."""
    collect_seldom()
    tz = ZoneInfo(tz_name)
    with sock:
        while True:
            head = _read_exactly(sock, HEADER_BYTES)
            if head is None:
                return
            body = _read_exactly(sock, int.from_bytes(head, "big"))
            if body is None:
                return
            payloads, headers = pickle.loads(body)  # nosec B301: sent by the listener
            sock.sendall(_frame(parse_many(payloads, headers, tz)))


class ParseWorker:
    """One parse process; `parse` sends it a chunk and awaits the results. Chunks are answered in
    the order they were sent."""

    def __init__(self, tz_name: str) -> None:
        self.tz_name = tz_name
        self._process: Any = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: collections.deque[asyncio.Future[list[tuple[str, Any]]]] = (
            collections.deque()
        )

    async def start(self) -> None:
        """Start the process and connect to it. It is a new interpreter that imports this module
        alone (not forked: forking a process that runs Kafka client threads can copy a held
        lock; nor `multiprocessing`'s spawn, which first runs the parent's main script again)."""
        ours, theirs = socket.socketpair()
        code = "import sys; from ingest.hl7_parsing import serve_fd; serve_fd(*sys.argv[1:])"
        try:
            # The child's own argv: the socket's descriptor and the territory's zone.
            self._process = await asyncio.to_thread(
                subprocess.Popen,  # nosec B603: this interpreter, fixed code, no shell
                [sys.executable, "-c", code, str(theirs.fileno()), self.tz_name],
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def parse(
        self, payloads: list[bytes], headers: list[MessageHeader]
    ) -> list[tuple[str, Any]]:
        """`parse_many` of the chunk, in the process; ParseWorkerGone if it is gone."""
        if self._writer is None or self._writer.is_closing():
            raise ParseWorkerGone("the parse worker is not running")
        future: asyncio.Future[list[tuple[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            self._writer.write(_frame((payloads, headers)))
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            if future.done():
                future.exception()  # the reader already failed it: the error is this one
            else:
                future.cancel()
            raise ParseWorkerGone(f"the parse worker is gone: {exc!r}") from exc
        return await future

    async def _read(self, reader: asyncio.StreamReader) -> None:
        gone = ParseWorkerGone("the parse worker was stopped")
        try:
            while True:
                head = await reader.readexactly(HEADER_BYTES)
                body = await reader.readexactly(int.from_bytes(head, "big"))
                # Sent by our own child process.
                results = pickle.loads(body)  # nosec B301
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(results)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            gone = ParseWorkerGone(f"the parse worker is gone: {exc!r}")
        finally:
            # Whoever still waits learns it now, whatever ended the read.
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(gone)
            if self._writer is not None:
                self._writer.close()

    def load(self) -> int:
        """Chunks sent and not answered yet."""
        return len(self._waiting)

    @property
    def pid(self) -> int | None:
        """The process id of the child (for tests and logs)."""
        return None if self._process is None else int(self._process.pid)

    async def stop(self) -> None:
        """Close the socket (the child then exits) and wait a little for the process."""
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        process = self._process
        if process is not None:
            try:
                await asyncio.to_thread(process.wait, 5)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
