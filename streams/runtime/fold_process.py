"""`BatchProcessor.fold` in child processes, so that the rules of a batch use the other core.

The worker process runs its consumer, producer and SQL writes under one GIL; the rules (decoding,
mapping, folding, serialising states) were more than half of its CPU, and a thread gave them only
the time the rest left. In processes of their own they run beside the SQL write of the previous
batch (`FoldWritePipeline`), and with two of them (`FoldProcesses`, each for its share of the
partitions) the first batch of a backlog, which nothing overlaps, is folded sooner.

Per batch, over a pipe: the worker sends the raw messages; the child decodes them and asks for
the stored states of the patients it found; the worker answers (`FoldWritePipeline.get_state`:
the batches folded but not finished, then its table); the child folds and sends back the outcome.
The child keeps its decoded states between batches, keyed by the value they came from: a value the
worker sends back unchanged is not decoded again. It holds nothing else: the worker's table stays
the state, and a new child starts from it. So once a backfill is over the worker stops its fold
processes (`FoldProcesses.stop`), which gives all their memory back, and the next batch starts
them again.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle  # nosec B403: only between the worker and its own fold processes
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from streams.core.pathway import PathwayRules
from streams.runtime.batch import BatchOutcome, BatchProcessor, RawMessage, StateValue
from streams.runtime.gc_tuning import collector_paused

log = logging.getLogger(__name__)

# After a batch of at least this many messages, free memory is given back to the system.
LARGE_BATCH = 1000


class FoldProcessError(RuntimeError):
    """The fold process failed or is gone; the worker must not go on past the batch."""


def serve(conn: Connection, rules: PathwayRules) -> None:
    """The child's loop: one batch per message received, until the pipe closes."""
    from streams.runtime.gc_tuning import give_back_memory, tune_gc

    tune_gc()
    processor = BatchProcessor(sink=None, rules=rules)  # type: ignore[arg-type]  # folds only
    while True:
        try:
            raw = conn.recv()
        except EOFError:
            return
        with collector_paused():
            if not _fold_one(conn, processor, raw):
                return
        if len(raw) >= LARGE_BATCH:
            del raw
            give_back_memory()


def _fold_one(conn: Connection, processor: BatchProcessor, raw: list[Any]) -> bool:
    """Fold one batch received from the worker and send back its outcome; False once the
    worker's end of the pipe is closed."""
    try:
        started = time.perf_counter()
        messages = [RawMessage(*m) for m in raw]
        outcome, grouped = processor.group(messages)
        conn.send(("states", list(grouped.events)))
        stored = conn.recv()
        processor.fold_grouped(outcome, grouped, stored)
        outcome.rules_s = time.perf_counter() - started
        # The worker has the messages: send their positions, not their bytes.
        position = {id(m): i for i, m in enumerate(messages)}
        raw_of = {pid: [position[id(m)] for m in ms] for pid, ms in outcome.raw_of.items()}
        location_raw = {
            lid: [position[id(m)] for m in ms] for lid, ms in outcome.location_raw.items()
        }
        outcome.raw_of, outcome.location_raw = {}, {}
        conn.send(("outcome", (outcome, raw_of, location_raw)))
    except EOFError:
        return False
    except Exception:
        conn.send(("error", traceback.format_exc()))
    return True


def receive(conn: Connection) -> Any:
    """What the fold process sent, unpickled with the cycle collector paused: an outcome holds a
    batch's rows (hundreds of thousands of dicts and lists), and the young collections its
    unpickling set off in the worker made it half again as long."""
    data = conn.recv_bytes()
    with collector_paused():
        return pickle.loads(data)  # nosec B301: sent by our own fold process


class FoldProcess:
    """A child process that folds batches as `BatchProcessor.fold` does (`fold`); started on
    first use or by `start`, stopped with the worker (it is a daemon) or by `stop`."""

    def __init__(self, rules: PathwayRules) -> None:
        self.rules = rules
        self._conn: Connection | None = None
        self._process: Any = None

    def start(self) -> None:
        if self._conn is not None:
            return
        # Not forked: the worker has threads by now, and a fork copies their locks as they are.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=serve, args=(theirs, self.rules), name="parcours-fold", daemon=True
        )
        self._process.start()
        theirs.close()
        self._conn = ours
        log.info("fold process started (pid %s)", self._process.pid)

    def stop(self) -> None:
        """End the child once it has read what was sent (its pipe closes); `fold` starts a new
        one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
            self._process = None

    def terminate(self) -> None:
        """End the child now, without waiting (a stopping worker); the batch it was folding
        is replayed at the next start."""
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()

    def fold(
        self, messages: list[RawMessage], get_state: Callable[[str], StateValue | None]
    ) -> BatchOutcome:
        """Fold a batch in the child; `get_state` answers its questions about stored states."""
        self.start()
        conn = self._conn
        assert conn is not None
        try:
            conn.send([(m.key, m.value, m.partition) for m in messages])
            kind, payload = receive(conn)
            if kind == "states":
                conn.send({pid: get_state(pid) for pid in payload})
                kind, payload = receive(conn)
        except (EOFError, OSError) as exc:
            raise FoldProcessError(f"the fold process is gone: {exc!r}") from exc
        if kind != "outcome":
            raise FoldProcessError(f"the fold process failed on a batch:\n{payload}")
        outcome, raw_of, location_raw = payload
        assert isinstance(outcome, BatchOutcome)
        outcome.raw_of = {pid: [messages[i] for i in idx] for pid, idx in raw_of.items()}
        outcome.location_raw = {
            lid: [messages[i] for i in idx] for lid, idx in location_raw.items()
        }
        return outcome


class FoldProcesses:
    """Several fold processes, each folding the messages of its share of the raw partitions at
    the same time (a patient's messages share a key, so a partition).

    Should a patient still turn up in two shares (a message keyed by something other than its
    patient), the batch is folded again whole by the first process: two folds of one patient
    from the same stored state would each miss the other's events.
    """

    def __init__(self, rules: PathwayRules, count: int) -> None:
        self.processes = [FoldProcess(rules) for _ in range(count)]
        self._threads = ThreadPoolExecutor(count, thread_name_prefix="parcours-fold")

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        """End every child (see `FoldProcess.stop`); the next `fold` starts them again."""
        for process in self.processes:
            process.stop()

    def terminate(self) -> None:
        """End every child now (see `FoldProcess.terminate`)."""
        for process in self.processes:
            process.terminate()

    def fold(
        self, messages: list[RawMessage], get_state: Callable[[str], StateValue | None]
    ) -> BatchOutcome:
        n = len(self.processes)
        shares: list[list[RawMessage]] = [[] for _ in range(n)]
        for m in messages:
            shares[m.partition % n].append(m)
        busy = [(p, share) for p, share in zip(self.processes, shares, strict=True) if share]
        if len(busy) == 1:  # its usual process, which holds its patients' decoded states
            return busy[0][0].fold(messages, get_state)
        if not busy:
            return self.processes[0].fold(messages, get_state)
        outcomes = list(self._threads.map(lambda ps: ps[0].fold(ps[1], get_state), busy))
        seen: set[str] = set()
        for outcome in outcomes:
            if seen & outcome.raw_of.keys():
                log.warning("a patient's messages are in two partitions; folding the batch whole")
                return self.processes[0].fold(messages, get_state)
            seen |= outcome.raw_of.keys()
        return merge_outcomes(outcomes)


def merge_outcomes(outcomes: list[BatchOutcome]) -> BatchOutcome:
    """One outcome of the folds of disjoint sets of patients."""
    merged = BatchOutcome()
    for o in outcomes:
        merged.states.update(o.states)
        merged.alerts.extend(o.alerts)
        merged.rejects.extend(o.rejects)
        merged.events += o.events
        merged.raw_of.update(o.raw_of)
        for lid, raw in o.location_raw.items():
            merged.location_raw.setdefault(lid, []).extend(raw)
        merged.sink_batch.patients.extend(o.sink_batch.patients)
        merged.sink_batch.locations.extend(o.sink_batch.locations)
        merged.sink_batch.organizations.extend(o.sink_batch.organizations)
        merged.organization_raw.extend(o.organization_raw)
        merged.sink_batch.encounters.extend(o.sink_batch.encounters)
        merged.rules_s = max(merged.rules_s, o.rules_s)
    return merged
