"""The benches' table: names padded to the longest, rates right-aligned under their unit."""

from __future__ import annotations

from bench import rate_table


def test_rates_line_up_under_their_unit() -> None:
    rows = [("peer", "3,574", "mean of two runs"), ("ours, end to end", "1,274", "")]
    assert rate_table(rows, "messages/s") == [
        " " * 19 + "messages/s",  # 16 for the names, 2 between, 1 to right-align 10 in 11
        "peer" + " " * 12 + "  " + "      3,574" + "  mean of two runs",
        "ours, end to end" + "  " + "      1,274",
    ]
