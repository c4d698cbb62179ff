"""The bed board's hour-by-hour heat map: one row per ward, whatever the wards are called."""

from __future__ import annotations

import pandas as pd

from dashboard.queries import ward_labels


def test_wards_of_the_same_name_in_two_hospitals_get_one_row_each() -> None:
    heat = pd.DataFrame(
        {
            "unit_id": ["chu-cardio", "chu-cardio", "drevon-cardio", "chu-pneumo", "x-1", "x-2"],
            "hospital_id": ["chu", "chu", "drevon", "chu", "chu", "chu"],
            "name": [
                "Cardiologie",
                "Cardiologie",
                "Cardiologie",
                "Pneumologie",
                "Pédiatrie",
                "Pédiatrie",
            ],
        }
    )
    names = {"chu": "CHU Dijon Bourgogne", "drevon": "Clinique Drevon"}
    assert ward_labels(heat, names).tolist() == [
        "Cardiologie · CHU Dijon Bourgogne",
        "Cardiologie · CHU Dijon Bourgogne",
        "Cardiologie · Clinique Drevon",
        "Pneumologie",
        # Two wards of one hospital with one name: their ids tell them apart.
        "Pédiatrie · CHU Dijon Bourgogne · x-1",
        "Pédiatrie · CHU Dijon Bourgogne · x-2",
    ]


def test_a_ward_without_a_name_is_shown_by_its_id() -> None:
    heat = pd.DataFrame({"unit_id": ["w-9"], "hospital_id": ["h-unknown"], "name": [None]})
    assert ward_labels(heat, {}).tolist() == ["w-9"]
