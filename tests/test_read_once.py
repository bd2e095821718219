"""How often each disc is read: every volume source counts the bytes it reads (imgbuild/discs/sources.py), and a
command locates its set once, so the counts say what one command cost each disc.

verify reads every volume exactly once (the damage is located to the block in that read); repair reads each
disc once to verify it, rebuilds a damaged volume from the copy it kept while reading it, and then reads only
the other volumes' stretches a bad block spans; load-and-run reads at most each volume once, its load being
its verification.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imgbuild.discs.iso import make_volume_isos
from imgbuild.discs.locate import LocatedSet, locate_set
from imgbuild.discs.problems import ProblemKind
from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import ChecksumMismatch
from imgbuild.parity.volumes import ParityOptions, add_parity_volumes
from imgbuild.restore.load import LoadOptions
from imgbuild.restore.repair import RepairOptions, repair_located
from imgbuild.restore.run import RunOptions, run_located, stop_and_remove
from imgbuild.restore.verify import verify_located
from imgbuild.setformat import layout
from imgbuild.setformat.blockhash import BLOCK_SIZE
from imgbuild.setformat.manifest import SetManifest
from imgbuild.setformat.volume_files import format_doc
from tests.support.restore_sets import flip, manifest_of, random_set, remove_images, set_image_id
from tests.support.synthetic_set import make_set, write_metadata
from tests.test_run import web_set  # noqa: F401 - the fixture: a set of a runnable HTTP server image

MIB = 1024 * 1024


def volume_sizes(located: LocatedSet) -> dict[int, int]:
    """Each volume's size: the bytes of all the files on it."""
    return {number: sum(source.list().sizes.values()) for number, source in located.volumes.items()}


def damaged_set(tmp_path: Path) -> tuple[Path, SetManifest]:
    """3 data volumes + 1 parity volume (format 3, block hashes); block 1 of volume 1's part is damaged."""
    root = tmp_path / "set"
    manifest = make_set(root, [3 * BLOCK_SIZE + 5, 2 * MIB, MIB], format_doc=format_doc())
    manifest = add_parity_volumes(lambda k: root / layout.volume_folder(manifest.set_id, k), manifest,
                                  ParityOptions(1))
    write_metadata(root, manifest)
    flip(root / manifest.volumes[0].folder / manifest.volumes[0].files[0].path, BLOCK_SIZE + 3)
    return root, manifest


def test_verify_reads_each_volume_exactly_once_and_locates_the_damage_in_that_read(tmp_path: Path) -> None:
    root, manifest = damaged_set(tmp_path)
    located = locate_set([root])
    report = verify_located(located)
    [problem] = report.problems
    assert (problem.kind, problem.volume, problem.file, problem.blocks) == (
        ProblemKind.SHA256, 1, manifest.volumes[0].files[0].path, (1,))
    assert report.recovery is not None and report.recovery.recoverable
    assert [d.bad_blocks for d in report.recovery.damaged] == [(1,)]
    assert located.bytes_read() == volume_sizes(located)
    assert dict(report.bytes_read) == located.bytes_read()


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso is not installed")
def test_verify_reads_iso_volumes_once(tmp_path: Path) -> None:
    root, manifest = damaged_set(tmp_path)
    images = make_volume_isos(root, manifest.set_id, [(v.number, v.folder) for v in manifest.volumes])
    located = locate_set([image.path for image in images])
    report = verify_located(located)
    assert [(p.volume, p.blocks) for p in report.problems] == [(1, (1,))]
    assert located.bytes_read() == volume_sizes(located)


def test_repair_of_a_lost_volume_reads_each_other_volume_exactly_once(tmp_path: Path) -> None:
    root, manifest = damaged_set(tmp_path)
    flip(root / manifest.volumes[0].folder / manifest.volumes[0].files[0].path, BLOCK_SIZE + 3)  # undamaged
    shutil.rmtree(root / manifest.volumes[2].folder)  # volume 3 is lost: built while 1, 2 and 4 are verified
    located = locate_set([root])
    result = repair_located(located, RepairOptions(out=tmp_path / "out"))
    assert result.check is not None and result.check.ok and result.recovery.targets == (3,)
    assert located.bytes_read() == volume_sizes(located)


def test_repair_verifies_each_volume_once_and_then_reads_only_what_the_rebuild_needs(tmp_path: Path) -> None:
    root, manifest = damaged_set(tmp_path)
    shutil.rmtree(root / manifest.volumes[2].folder)  # volume 3 is lost too
    located = locate_set([root])
    sizes = volume_sizes(located)
    result = repair_located(located, RepairOptions(out=tmp_path / "out"))
    assert result.check is not None and result.check.ok
    assert result.recovery.targets == (1, 3)
    assert result.verified is not None
    verified = dict(result.verified.bytes_read)
    assert verified == sizes  # each disc once; the damage assessment read nothing more
    total = dict(result.bytes_read)
    again = {number: total[number] - verified[number] for number in total}
    # The lost volume 3 was built while 1, 2 and 4 were verified. Volume 1, found damaged in that read, is
    # rebuilt from the copy kept while it was read: its disc is not read again. Its bad block is decoded from
    # volumes 2, 3 and 4 at the same offsets, where only the parity volume has bytes (2 and 3 end before it):
    # one block of the parity disc is read again.
    assert again == {1: 0, 2: 0, 4: BLOCK_SIZE}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        manifest.volume(n).folder for n in (1, 3))  # the copies verify kept are gone
    for number, size in sorted(sizes.items()):
        print(f"volume {number}: {size} bytes, verify read {verified[number]}, repair read {total[number]}")


def test_repair_of_a_damaged_volume_does_not_read_its_disc_again(tmp_path: Path) -> None:
    root, manifest = damaged_set(tmp_path)
    located = locate_set([root])
    sizes = volume_sizes(located)
    result = repair_located(located, RepairOptions(out=tmp_path / "out"))
    assert result.check is not None and result.check.ok and result.recovery.targets == (1,)
    assert result.verified is not None and dict(result.verified.bytes_read) == sizes
    again = {number: read - sizes[number] for number, read in result.bytes_read}
    # Volume 1 is rebuilt from the copy kept while verify read it; its bad block (at 4 MiB) is decoded from
    # the same offsets of volumes 2, 3 (which end before it) and 4: one block of the parity disc again.
    assert again == {1: 0, 2: 0, 3: 0, 4: BLOCK_SIZE}


@pytest.mark.engine
def test_load_and_run_of_a_damaged_set_reads_each_volume_at_most_once(
        engine: Engine, web_set: tuple[Path, SetManifest], tmp_path: Path) -> None:  # noqa: F811
    folder, manifest = web_set
    work = tmp_path / "set"
    shutil.copytree(folder, work)
    readme = work / manifest.volumes[1].folder / layout.README_NAME  # damage load does not need to read
    flip(readme, 3)
    located = locate_set([work])
    sizes = volume_sizes(located)
    result = run_located(engine, located, LoadOptions(), RunOptions(port=0, detach=True, health_timeout=60))
    try:
        assert result.load is not None and [i.status for i in result.load.images] == ["loaded"]
    finally:
        stop_and_remove(engine, result.container_id)
        image = manifest.images[0]
        remove_images(engine, [ref for ref in (set_image_id(engine, image), image.id) if ref])
    read = located.bytes_read()
    assert all(read[number] <= sizes[number] for number in sizes), (read, sizes)
    assert result.load.bytes_read == sum(layer.compressed_size for layer in manifest.layers)
    for number in sorted(sizes):
        print(f"volume {number}: {sizes[number]} bytes, load-and-run read {read[number]}")


@pytest.mark.engine
def test_load_and_run_stops_at_a_damaged_part_having_read_each_volume_at_most_once(
        engine: Engine, tmp_path: Path) -> None:
    volumes = random_set(engine, "read-once", tmp_path / "set")
    manifest = manifest_of(volumes[0])
    part = manifest.layers[-1].parts[-1]
    flip(tmp_path / "set" / manifest.volume(part.volume).folder / part.path, 10)
    located = locate_set([tmp_path / "set"])
    sizes = volume_sizes(located)
    app = next(image for image in manifest.images if image.layers == [layer.diff_id for layer in manifest.layers])
    try:
        with pytest.raises(ChecksumMismatch, match=part.path):
            run_located(engine, located, LoadOptions(), RunOptions(image=app.tags[0], port=0, detach=True))
    finally:
        remove_images(engine, [ref for image in manifest.images for ref in (set_image_id(engine, image), image.id)
                               if ref])
    read = located.bytes_read()
    assert all(read[number] <= sizes[number] for number in sizes), (read, sizes)
