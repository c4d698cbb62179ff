"""The cycle collector is off while a fold process folds a batch, and while the worker unpickles
its result, and on again after, even when the batch fails."""

from __future__ import annotations

import gc
import multiprocessing
from typing import Any

import pytest

from streams.runtime.fold_process import receive
from streams.runtime.gc_tuning import collector_paused


def test_the_collector_is_paused_for_the_block_and_on_again_after_it() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_collector_is_on_again_after_a_failure() -> None:
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("a batch that fails")
    assert gc.isenabled()


SEEN: list[bool] = []


def _collector_state() -> str:
    SEEN.append(gc.isenabled())
    return "unpickled"


class _Probe:
    """Records, as it is unpickled, whether the cycle collector is on."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _collector_state, ()


def test_a_fold_result_is_unpickled_with_the_collector_paused() -> None:
    ours, theirs = multiprocessing.Pipe()
    with ours, theirs:
        theirs.send(("outcome", _Probe()))
        SEEN.clear()
        assert receive(ours) == ("outcome", "unpickled")
    assert SEEN == [False]
    assert gc.isenabled()
