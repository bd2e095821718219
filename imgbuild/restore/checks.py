"""The re-test schedule: every `imgbuild verify` of a set is recorded in the catalog beside its manifest copy,
and `imgbuild catalog` lists the sets known here with their last check and whether one is due.

Discs age; the usual advice is to read them all back every few years (NARA: every 2 years), so the default
interval is 730 days. The record of set SETID is CATALOG/SETID.checks.json, a JSON list of checks (date,
result, volumes read, read errors), rewritten whole each time (NAME.partial, fsync, rename).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from imgbuild.foundation.atomicfile import write_atomic
from imgbuild.foundation.errors import ArchiveError, Remedy
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import parse_manifest

DEFAULT_INTERVAL_DAYS = 730
CHECKS_SUFFIX = ".checks.json"
MAX_CHECKS = 1000  # the oldest go first; a check every day for almost three years


def checks_path(catalog_dir: Path, set_id: str) -> Path:
    return catalog_dir / f"{set_id}{CHECKS_SUFFIX}"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def read_checks(path: Path) -> list[dict[str, Any]]:
    """The recorded checks, oldest first; a record that is not a JSON list is an error naming the file."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path}: the check record cannot be read: {exc}",
                           hint="move it away to start a new record") from None
    if not isinstance(data, list) or not all(isinstance(c, dict) and isinstance(c.get("date"), str) for c in data):
        raise ArchiveError(f"{path}: not a list of checks with dates", hint="move it away to start a new record")
    return data


def record_check(catalog_dir: Path, report: Any, when: datetime | None = None) -> Path:
    """Append one verify report (imgbuild.restore.verify.VerifyReport) to the set's record; returns the record's path."""
    path = checks_path(catalog_dir, report.set_id)
    checks = read_checks(path)
    checks.append({
        "date": (when or _now()).isoformat().replace("+00:00", "Z"),
        "ok": report.ok, "deep": report.deep,
        "volumes_read": list(report.volumes_checked), "volumes_missing": list(report.volumes_missing),
        "volumes_not_given": list(report.volumes_not_given),
        "bytes_read": report.bytes_checked, "read_errors": len(report.problems),
        "problems": [p.to_json() for p in report.problems[:50]],
    })
    write_atomic(path, (json.dumps(checks[-MAX_CHECKS:], indent=1) + "\n").encode())
    return path


@dataclass(frozen=True)
class CatalogOptions:
    catalog: Path = Path(layout.CATALOG_DEFAULT)
    interval_days: int = DEFAULT_INTERVAL_DAYS
    now: datetime | None = None  # for tests and "what is due by then" questions


@dataclass(frozen=True)
class CatalogEntry:
    set_id: str
    name: str
    created: str
    volumes: int
    checks: int
    last_check: str | None
    last_ok: bool | None
    last_complete: bool | None  # every volume was read in the last check
    due: str  # the date the next check is due
    is_due: bool

    def to_json(self) -> dict[str, Any]:
        return {"set_id": self.set_id, "name": self.name, "created": self.created, "volumes": self.volumes,
                "checks": self.checks, "last_check": self.last_check, "last_ok": self.last_ok,
                "last_complete": self.last_complete, "due": self.due, "is_due": self.is_due}


@dataclass(frozen=True)
class CatalogReport:
    catalog: str
    interval_days: int
    sets: tuple[CatalogEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {"catalog": self.catalog, "interval_days": self.interval_days,
                "sets": [s.to_json() for s in self.sets], "due": [s.set_id for s in self.sets if s.is_due]}


def _parse_date(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def list_catalog(options: CatalogOptions = CatalogOptions()) -> CatalogReport:
    """Every set whose manifest copy is in the catalog, with its last check and the date the next is due.

    A set is due when it was never checked completely and without errors within the interval: a check
    that failed or read only some volumes does not reset the clock."""
    if options.interval_days < 1:
        raise ArchiveError(f"a re-test interval of {options.interval_days} days: must be at least 1")
    if not options.catalog.is_dir():
        raise ArchiveError(f"{options.catalog}: no catalog folder here", remedy=Remedy.GIVE_CATALOG)
    now = options.now or _now()
    interval = timedelta(days=options.interval_days)
    entries = []
    for path in sorted(options.catalog.glob("*.json")):
        set_id = path.name.removesuffix(".json")
        if not layout.SET_ID_RE.match(set_id):
            continue  # SETID.checks.json and files that are not manifest copies
        manifest = parse_manifest(path.read_bytes(), str(path))  # a bad copy is an error naming its field
        checks = read_checks(checks_path(options.catalog, set_id))
        last = checks[-1] if checks else None
        complete = [c for c in checks if c.get("ok") and not c.get("volumes_not_given") and not c.get("volumes_missing")]
        since = _parse_date(complete[-1]["date"]) if complete else _parse_date(manifest.created)
        due = since + interval
        last_complete = None if last is None else not (last.get("volumes_not_given") or last.get("volumes_missing"))
        entries.append(CatalogEntry(
            set_id, manifest.name, manifest.created, manifest.volume_count, len(checks),
            last["date"] if last else None, bool(last["ok"]) if last else None, last_complete,
            due.isoformat().replace("+00:00", "Z"), due <= now or (last is not None and not last.get("ok"))))
    return CatalogReport(str(options.catalog), options.interval_days, tuple(entries))
