"""Read the Santé publique France daily hospital census (covid_hospit.csv) into a clean series.

The file's quirks: `;` separators, mixed `yyyy-mm-dd` and `dd/mm/yyyy` dates, inconsistent quoting,
`dep` codes with leading zeros and `2A`/`2B`, a few rows with no département, and `sexe=0` for all
sexes (not the sum of 1 and 2).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from forecasting import ForecastingError


def load_spf(path: Path) -> pd.DataFrame:
    """All-sexes rows with parsed dates: columns dep, ds, hosp, rea, rad, dc."""
    raw = pd.read_csv(path, sep=";", dtype={"dep": str, "jour": str})
    raw = raw[(raw["sexe"] == 0) & raw["dep"].notna() & (raw["dep"].str.len() > 0)].copy()
    iso = pd.to_datetime(raw["jour"], format="%Y-%m-%d", errors="coerce")
    french = pd.to_datetime(raw["jour"], format="%d/%m/%Y", errors="coerce")
    raw["ds"] = iso.fillna(french)
    if raw["ds"].isna().any():
        bad = raw.loc[raw["ds"].isna(), "jour"].iloc[0]
        raise ForecastingError(f"{path}: unreadable date {bad!r} in column jour")
    return raw[["dep", "ds", "hosp", "rea", "rad", "dc"]].sort_values(["dep", "ds"])


def department_series(frame: pd.DataFrame, dep: str, column: str = "hosp") -> pd.DataFrame:
    """The daily `column` stock of one département as `ds, y`."""
    rows = frame[frame["dep"] == dep]
    if rows.empty:
        raise ForecastingError(f"no rows for département {dep!r}; codes look like '21' or '2A'")
    return rows[["ds", column]].rename(columns={column: "y"}).reset_index(drop=True)
