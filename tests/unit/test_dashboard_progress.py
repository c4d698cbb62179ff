"""How Feed health and the bed board put the stream workers' progress reports in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dashboard.queries import progress_status, stream_freshness


@pytest.mark.parametrize(
    ("lag", "age_s", "status"),
    [
        (0, 3, "up to date"),
        (1234, 3, "catching up: 1,234 messages to apply"),
        (1, 3, "catching up: 1 message to apply"),
        (None, 3, "starting"),
        (0, 300, "no report for 5 min"),
    ],
)
def test_the_feed_health_page_puts_a_report_in_words(
    lag: int | None, age_s: float, status: str
) -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    reported = now - timedelta(seconds=age_s)
    assert progress_status(lag, reported, now, timedelta(minutes=2), "en") == status
    # SQLite (the demo's database) gives the same time back naive.
    naive = reported.replace(tzinfo=None)
    assert progress_status(lag, naive, now, timedelta(minutes=2), "en") == status


@pytest.mark.parametrize(
    ("lag", "status"),
    [
        (1, "rattrapage : 1 message à appliquer"),
        (1234, "rattrapage : 1\u202f234 messages à appliquer"),
    ],
)
def test_the_messages_left_in_french_take_the_singular_or_plural(lag: int, status: str) -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert progress_status(lag, now, now, timedelta(minutes=2), "fr") == status


def test_freshness_counts_silent_partitions_and_the_messages_left() -> None:
    import pandas as pd

    progress = pd.DataFrame(
        {
            "lag": [0, 20, None],
            "silent": [False, True, False],
        }
    )
    assert stream_freshness(progress) == (1, 20)
    assert stream_freshness(progress.iloc[0:0]) == (0, 0)
