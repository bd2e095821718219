"""The re-test schedule: `verify` records each check beside the catalog copy; `catalog` lists sets, last
check, and which are due (default every 730 days; a failed or partial check does not reset the clock)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from imgbuild.foundation.errors import ArchiveError
from imgbuild.restore.checks import CatalogOptions, checks_path, list_catalog, read_checks
from imgbuild.restore.verify import VerifyOptions, verify_set
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import dump_manifest
from tests.support.synthetic_set import make_set, write_metadata

IMGBUILD = Path(sys.executable).parent / "imgbuild"


def known_set(tmp_path: Path):  # type: ignore[no-untyped-def]
    root, catalog = tmp_path / "set", tmp_path / "catalog"
    manifest = make_set(root, [100_000, 200_000, 50_000])
    write_metadata(root, manifest)
    catalog.mkdir()
    layout.catalog_path(catalog, manifest.set_id).write_bytes(dump_manifest(manifest))
    return root, catalog, manifest


def test_each_verify_is_recorded_and_the_catalog_says_what_is_due(tmp_path: Path) -> None:
    root, catalog, manifest = known_set(tmp_path)
    created = datetime.fromisoformat(manifest.created.replace("Z", "+00:00"))
    never = list_catalog(CatalogOptions(catalog=catalog, now=created + timedelta(days=731))).sets[0]
    assert (never.checks, never.last_check, never.is_due) == (0, None, True)

    report = verify_set([root], VerifyOptions(record_in=catalog))
    assert report.ok and report.recorded == str(checks_path(catalog, manifest.set_id))
    only_two = [root / v.folder for v in manifest.volumes[:2]]
    assert verify_set(only_two, VerifyOptions(record_in=catalog)).ok  # volume 3 not given: a partial check
    shutil.rmtree(root / manifest.volumes[2].folder)
    assert not verify_set([root], VerifyOptions(record_in=catalog)).ok

    checks = read_checks(checks_path(catalog, manifest.set_id))
    assert [(c["ok"], c["volumes_read"], c["volumes_not_given"], c["read_errors"]) for c in checks] == [
        (True, [1, 2, 3], [], 0), (True, [1, 2], [3], 0), (False, [1, 2], [], 1)]
    assert checks[2]["problems"][0]["kind"] == "volume-missing" and checks[2]["volumes_missing"] == [3]

    first = datetime.fromisoformat(checks[0]["date"].replace("Z", "+00:00"))
    entry = list_catalog(CatalogOptions(catalog=catalog, now=first + timedelta(days=10))).sets[0]
    assert (entry.checks, entry.last_ok, entry.last_complete) == (3, False, False)
    assert entry.is_due  # the last check failed
    assert entry.due.startswith((first + timedelta(days=730)).date().isoformat())  # from the last complete OK check

    verify_set([root / v.folder for v in manifest.volumes[:2]],
               VerifyOptions(record_in=catalog))  # partial and OK: does not reset the clock, no longer failing
    later = list_catalog(CatalogOptions(catalog=catalog, now=first + timedelta(days=10)))
    assert not later.sets[0].is_due
    assert list_catalog(CatalogOptions(catalog=catalog, now=first + timedelta(days=731))).sets[0].is_due
    assert list_catalog(CatalogOptions(catalog=catalog, interval_days=5, now=first + timedelta(days=6))).sets[0].is_due


def test_unknown_sets_are_not_recorded_and_bad_records_are_named(tmp_path: Path) -> None:
    root, catalog, manifest = known_set(tmp_path)
    elsewhere = tmp_path / "other-catalog"
    elsewhere.mkdir()
    assert verify_set([root], VerifyOptions(record_in=elsewhere)).recorded is None
    assert list(elsewhere.iterdir()) == []
    checks_path(catalog, manifest.set_id).write_text("{not json")
    with pytest.raises(ArchiveError, match=f"{manifest.set_id}.checks.json"):
        list_catalog(CatalogOptions(catalog=catalog))
    with pytest.raises(ArchiveError, match="no catalog folder"):
        list_catalog(CatalogOptions(catalog=tmp_path / "nothing"))


def test_cli_verify_records_and_catalog_lists(tmp_path: Path) -> None:
    root, catalog, manifest = known_set(tmp_path)
    done = subprocess.run([str(IMGBUILD), "verify", str(root), "--catalog", str(catalog)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and f"check recorded in {catalog}" in done.stdout.replace("\n", ""), done.stdout
    listed = subprocess.run([str(IMGBUILD), "catalog", "--catalog", str(catalog), "--json"], capture_output=True,
                            text=True, timeout=120)
    data = json.loads(listed.stdout)
    assert [s["set_id"] for s in data["sets"]] == [manifest.set_id] and data["due"] == []
    assert data["sets"][0]["last_ok"] is True and data["interval_days"] == 730
    table = subprocess.run([str(IMGBUILD), "catalog", "--catalog", str(catalog), "--interval-days", "0"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 2 and "--interval-days 0" in table.stderr
