"""Fakes of the small interfaces that pure code takes, for unit tests."""

from __future__ import annotations

from collections.abc import Sequence

from streams.core.events import LocationRecorded
from streams.sink.rows import SinkBatch, SinkResult


class NoWrites:
    """A `RowSink` for tests that fold batches and never write them."""

    def write(self, batch: SinkBatch) -> SinkResult:
        raise AssertionError("this test folds batches; it does not write them")

    def refused(self, locations: Sequence[LocationRecorded]) -> None:
        raise AssertionError("this test folds batches; it does not write them")
