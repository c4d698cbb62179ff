"""How long `parcours demo` takes to show forecasts: run it on free ports in a fresh folder and
time, from the command's start, the history in the broker, the history folded, the first
forecast row in SQL, and the end of the first forecast run (every unit written).

Usage: .venv/bin/python scripts/demo_timing.py [--keep-dir DIR] [--timeout-s 1800]
It stops the demo (Ctrl-C) when the first forecast run ends, and prints one line per milestone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parcours.broker import free_port

MILESTONES = [
    ("history in the broker", b"History in the broker"),
    ("history folded", b"History folded"),
    ("forecaster started", b"First forecast started"),
]


def forecast_units(db: Path) -> int:
    """Units with at least one forecast row (0 while the table is missing or empty)."""
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            row = conn.execute("SELECT count(DISTINCT unit_id) FROM forecasts").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


def main() -> int:
    """Run the demo once and print its milestones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-dir", type=Path, help="Use (and keep) this data folder.")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    args = parser.parse_args()
    folder = args.keep_dir or Path(tempfile.mkdtemp(prefix="parcours-demo-timing-"))
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    for name in ("BROKER", "INGEST", "DASHBOARD", "WORKER_WEB"):
        env[f"PARCOURS_{name}_PORT"] = str(free_port())
    env["PARCOURS_DATA_DIR"] = str(folder / "data")
    db = folder / "data" / "parcours.db"
    log = folder / "demo.log"
    t0 = time.monotonic()
    seen: dict[str, float] = {}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parcours", "demo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            while time.monotonic() - t0 < args.timeout_s and proc.poll() is None:
                text = log.read_bytes()
                for name, marker in MILESTONES:
                    if name not in seen and marker in text:
                        seen[name] = time.monotonic() - t0
                        print(f"{seen[name]:7.0f} s  {name}", flush=True)
                units = forecast_units(db)
                if units and "first forecast row" not in seen:
                    seen["first forecast row"] = time.monotonic() - t0
                    print(f"{seen['first forecast row']:7.0f} s  first forecast row", flush=True)
                if b"next forecast run in" in text:
                    elapsed = time.monotonic() - t0
                    print(f"{elapsed:7.0f} s  first forecast run done: {units} units", flush=True)
                    return 0
                time.sleep(1)
            print(f"no complete forecast run within {args.timeout_s:.0f} s; log: {log}")
            return 1
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
