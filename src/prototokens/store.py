"""Sweep results in SQLite: one row per fitted (text, N, arrangement, sharing, seed, recipe).

A work unit (one fit call) writes its vectors to a safetensors file (atomically, beside the
database) and then commits all its rows in one transaction. A sweep killed at any moment
(kill -9 included) loses at most the unit in flight (and with snapshots, see `snapshots.py`, only
its steps since the last one); rerunning skips every committed unit and
the primary key makes a duplicate row impossible. WAL mode lets several ranks write at once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import PrototokensError

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    experiment TEXT NOT NULL,
    method TEXT NOT NULL,
    model TEXT NOT NULL,
    source TEXT NOT NULL,
    text_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    arrangement TEXT NOT NULL,
    share_e INTEGER NOT NULL,
    share_m INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    accuracy REAL,
    c_tokens INTEGER,
    steps INTEGER,
    status TEXT,
    h_lm_nats REAL,
    seconds REAL,
    fit_file TEXT,
    extra TEXT,
    created TEXT DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS results_unit ON results(unit);
"""


@dataclass
class Record:
    key: str
    unit: str
    experiment: str
    method: str
    model: str
    source: str
    text_id: str
    n: int
    arrangement: str
    share_e: int
    share_m: int
    seed: int
    recipe: str
    accuracy: float
    c_tokens: int
    steps: int
    status: str
    h_lm_nats: float | None
    seconds: float
    fit_file: str
    extra: dict = field(default_factory=dict)


class ResultStore:
    """The SQLite database of one run directory (`RUN/results.sqlite`, vectors under `RUN/fits/`)."""

    def __init__(self, run_dir: str | Path, create: bool = True):
        self.dir = Path(run_dir)
        self.path = self.dir / "results.sqlite"
        if not create and not self.path.exists():
            raise PrototokensError(f"no results database in {self.dir}")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "fits").mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=120)
        for attempt in range(60):  # switching to WAL takes an exclusive lock, which SQLite does not wait for
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.executescript(SCHEMA)
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 59:
                    raise PrototokensError(f"{self.path} is not a usable results database ({e})") from None
                time.sleep(0.5)
            except sqlite3.DatabaseError as e:
                raise PrototokensError(f"{self.path} is not a usable results database ({e})") from None

    def done_units(self) -> set[str]:
        return {u for (u,) in self.db.execute("SELECT DISTINCT unit FROM results")}

    def add(self, records: list[Record]) -> None:
        """Commit the rows of one finished unit atomically; rows already present are left as they are."""
        cols = [f for f in Record.__dataclass_fields__]
        rows = []
        for r in records:
            d = asdict(r)
            d["extra"] = json.dumps(d["extra"])
            rows.append(tuple(d[c] for c in cols))
        with self.db:  # one transaction
            self.db.executemany(
                f"INSERT OR IGNORE INTO results ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
        # Move the rows from the WAL into results.sqlite itself (SQLite only does so on its own past
        # 1000 pages or at a clean close), so that a copy of that one file, made after a kill, has them.
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def rows(self, where: str = "1", params: tuple = ()) -> list[dict]:
        cur = self.db.execute(f"SELECT * FROM results WHERE {where} ORDER BY rowid", params)
        names = [c[0] for c in cur.description]
        out = []
        for values in cur:
            d = dict(zip(names, values, strict=True))
            d["extra"] = json.loads(d["extra"] or "{}")
            out.append(d)
        return out

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self.db.close()
