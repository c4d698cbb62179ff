"""The cycle collector is off while a fold process folds a batch, and on again after, even when
the batch fails."""

from __future__ import annotations

import gc

import pytest

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
