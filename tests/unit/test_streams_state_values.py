"""The pathway table's values: a state packed and unpacked is the same state, and the values of
older changelogs (JSON text, a JSON string record, a JSON object) still read."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime

from streams.core.events import PatientAdmitted, SourceRef
from streams.core.pathway import DEFAULT_RULES, PatientState, transition
from streams.runtime.batch import pack_state, unpack_state


def _state() -> PatientState:
    admitted = PatientAdmitted(
        patient_id="p1",
        at=datetime(2026, 3, 1, 8, tzinfo=UTC),
        source=SourceRef("Encounter", "e1", "1"),
        stay_id="e1",
        hospital="h1",
        ward="w1",
    )
    state, _ = transition(None, admitted, DEFAULT_RULES)
    assert state is not None
    return state


def test_a_packed_state_unpacks_to_the_same_state_and_is_smaller_than_its_json() -> None:
    state = _state()
    packed = pack_state(state)
    assert isinstance(packed, bytes)
    assert unpack_state(packed) == state
    assert len(packed) < len(state.to_json())


def test_the_values_of_older_changelogs_still_read() -> None:
    state = _state()
    text = state.to_json()
    assert unpack_state(text) == state
    assert unpack_state(json.dumps(text).encode()) == state  # a JSON string record
    assert unpack_state(text.encode()) == state
    assert unpack_state(state.to_dict()) == state
    assert unpack_state(zlib.compress(text.encode(), 1)) == state  # deflated, as they were
