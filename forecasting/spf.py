"""Read census files: the Santé publique France daily hospital census (covid_hospit.csv) and any
census CSV with a date column and a count column.

Bad files stop with one `ForecastingError` line naming the file, the line and the column at
fault (line 1 is the header), so a manager can fix the file.

The SPF file's quirks: `;` separators, mixed `yyyy-mm-dd` and `dd/mm/yyyy` dates, inconsistent
quoting, `dep` codes with leading zeros and `2A`/`2B`, a few rows with no département, and
`sexe=0` for all sexes (not the sum of 1 and 2). `rad` and `dc` are cumulative returns home and
deaths since the start; the daily form (`incid_hosp`, `incid_rad`, `incid_dc`) gives the flows
directly.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting import ForecastingError

SPF_COLUMNS = ("dep", "jour", "hosp")


def _read(path: Path) -> pd.DataFrame:
    """Every cell as text, with `;` or `,` as separator (sniffed from the header)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise ForecastingError(f"{path}: cannot read the file: {exc}") from exc
    if not header.strip():
        raise ForecastingError(f"{path}: the file is empty")
    sep = ";" if header.count(";") > header.count(",") else ","
    try:
        frame = pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise ForecastingError(f"{path}: not a readable CSV file: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    frame.index = frame.index + 2  # file line numbers: the header is line 1
    return frame


def _require(path: Path, frame: pd.DataFrame, columns: list[str]) -> None:
    for col in columns:
        if col not in frame.columns:
            raise ForecastingError(
                f"{path}: no column {col!r} (the header has: {', '.join(frame.columns)})"
            )


def _numbers(path: Path, frame: pd.DataFrame, col: str) -> pd.Series:
    raw = frame[col].str.strip().str.replace(",", ".", regex=False)
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & (raw != "")
    if bad.any():
        line = bad.idxmax()
        raise ForecastingError(
            f"{path} line {line}: column {col!r} holds {frame.at[line, col]!r}, not a number"
        )
    return values.astype(float)


def _dates(path: Path, frame: pd.DataFrame, col: str) -> pd.Series:
    raw = frame[col].str.strip()
    parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=True)
    french = pd.to_datetime(raw, format="%d/%m/%Y", errors="coerce", utc=True)
    parsed = parsed.fillna(french)
    if parsed.isna().any():
        line = parsed.isna().idxmax()
        raise ForecastingError(
            f"{path} line {line}: column {col!r} holds {frame.at[line, col]!r}, not a date "
            "(yyyy-mm-dd, yyyy-mm-dd hh:mm or dd/mm/yyyy)"
        )
    return parsed.dt.tz_localize(None)


def _when(stamp: pd.Timestamp) -> str:
    return f"{stamp:%Y-%m-%d}" if stamp == stamp.normalize() else f"{stamp:%Y-%m-%d %H:%M}"


def _check_order(path: Path, ds: pd.Series, what: str = "") -> None:
    """Dates strictly increasing down the file (within one series)."""
    prev = ds.shift(1)
    dup = ds == prev
    back = ds < prev
    for mask, word in ((dup, "repeats"), (back, "comes before")):
        if mask.any():
            line = mask.idxmax()
            before = ds.index[ds.index.get_loc(line) - 1]
            hint = "remove the duplicate" if word == "repeats" else "sort the file by date"
            raise ForecastingError(
                f"{path} line {line}: date {_when(ds[line])}{what} {word} the date of "
                f"line {before}; {hint}"
            )


def load_spf(path: Path) -> pd.DataFrame:
    """All-sexes rows with parsed dates: columns dep, ds, hosp, and the flows the file has
    (cumulative rad, dc; or daily incid_hosp, incid_rad, incid_dc), sorted by dep and date."""
    frame = _read(path)
    _require(path, frame, list(SPF_COLUMNS))
    if "sexe" in frame.columns:
        frame = frame[frame["sexe"].str.strip() == "0"]
    frame = frame[frame["dep"].str.strip() != ""].copy()
    frame["dep"] = frame["dep"].str.strip()
    frame["ds"] = _dates(path, frame, "jour")
    out = frame[["dep", "ds"]].copy()
    for col in ("hosp", "rea", "rad", "dc", "incid_hosp", "incid_rad", "incid_dc"):
        if col in frame.columns:
            out[col] = _numbers(path, frame, col)
    if out["hosp"].isna().any():
        line = out["hosp"].isna().idxmax()
        raise ForecastingError(f"{path} line {line}: column 'hosp' is empty")
    for dep, rows in out.groupby("dep", sort=False):
        _check_order(path, rows["ds"], f" of département {dep}")
    return out.sort_values(["dep", "ds"], kind="stable")


def spf_flows(frame: pd.DataFrame) -> pd.DataFrame:
    """Add daily `admissions` and `departures` to an SPF series (`ds, y` and the file's flows).

    With the daily form they are `incid_hosp` and `incid_rad + incid_dc`. With the cumulative
    form, departures are the day's increase of `rad + dc` and admissions what the census change
    leaves over: `Δhosp + departures`. The first day then has no flows (NaN). Corrections in the
    file can make a day negative; the model counts such a day as 0."""
    out = frame.copy()
    if {"incid_hosp", "incid_rad", "incid_dc"} <= set(frame.columns):
        out["admissions"] = frame["incid_hosp"].to_numpy(dtype=float)
        out["departures"] = (frame["incid_rad"] + frame["incid_dc"]).to_numpy(dtype=float)
        return out
    if {"rad", "dc"} <= set(frame.columns):
        cum = (frame["rad"] + frame["dc"]).to_numpy(dtype=float)
        departures = np.r_[np.nan, np.diff(cum)]
        y = frame["y"].to_numpy(dtype=float)
        out["departures"] = departures
        out["admissions"] = np.r_[np.nan, np.diff(y)] + departures
    return out


def department_series(frame: pd.DataFrame, dep: str, column: str = "hosp") -> pd.DataFrame:
    """The daily `column` stock of one département as `ds, y`, with its daily flows when the
    file gives them (for `hosp`)."""
    rows = frame[frame["dep"] == dep]
    if rows.empty:
        raise ForecastingError(f"no rows for département {dep!r}; codes look like '21' or '2A'")
    if column not in rows.columns:
        raise ForecastingError(f"the file has no column {column!r}")
    series = rows.rename(columns={column: "y"}).reset_index(drop=True)
    keep = ["ds", "y"]
    if column == "hosp":
        series = spf_flows(series)
        keep += [c for c in ("admissions", "departures") if c in series.columns]
    return series[keep]


def load_census_csv(
    path: Path,
    date_col: str,
    value_col: str,
    admissions_col: str | None = None,
    discharges_col: str | None = None,
    freq: str = "D",
) -> pd.DataFrame:
    """One census series from any CSV: `ds, y` and, when the file gives them, `admissions` and
    `departures`.

    Flows come from `admissions_col`/`discharges_col`; without them, cumulative SPF `rad` and
    `dc` columns give departures (and so admissions). Dates must increase one `freq` step at a
    time: a repeated, backward or missing date is an error naming its line."""
    frame = _read(path)
    cols = [date_col, value_col] + [c for c in (admissions_col, discharges_col) if c]
    _require(path, frame, cols)
    if frame.empty:
        raise ForecastingError(f"{path}: the file has a header but no rows")
    ds = _dates(path, frame, date_col)
    _check_order(path, ds)
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    gaps = ds.diff() > step
    if gaps.any():
        line = gaps.idxmax()
        raise ForecastingError(
            f"{path} line {line}: date {_when(ds[line])} leaves a gap after the previous "
            f"row (one row per {'day' if freq.upper() == 'D' else 'hour'} is expected)"
        )
    out = pd.DataFrame({"ds": ds, "y": _numbers(path, frame, value_col)})
    if out["y"].isna().any():
        line = out["y"].isna().idxmax()
        raise ForecastingError(f"{path} line {line}: column {value_col!r} is empty")
    if admissions_col:
        out["admissions"] = _numbers(path, frame, admissions_col)
    if discharges_col:
        out["departures"] = _numbers(path, frame, discharges_col)
    if admissions_col and not discharges_col:
        # Departures are what the census change leaves over.
        out["departures"] = out["y"].shift(1) - out["y"] + out["admissions"]
    elif discharges_col and not admissions_col:
        out["admissions"] = out["y"].diff() + out["departures"]
    elif not admissions_col and {"rad", "dc"} <= set(frame.columns):
        out["rad"] = _numbers(path, frame, "rad")
        out["dc"] = _numbers(path, frame, "dc")
        out = spf_flows(out).drop(columns=["rad", "dc"])
    return out.reset_index(drop=True)
