"""Parity volumes: the code matches FORMAT.md's math, any M of N+M streams give back the rest, the manifest."""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import pytest

from imgbuild.foundation.errors import ArchiveError, ManifestError
from imgbuild.parity import erasure
from imgbuild.parity.volumes import ParityOptions, add_parity_volumes, check_parity, folder_opener, segments
from imgbuild.setformat import layout
from imgbuild.setformat.blockhash import BLOCK_SIZE
from imgbuild.setformat.manifest import dump_manifest, parse_manifest
from tests.support.synthetic_set import make_set

MIB = 1024 * 1024


gf_mul = erasure.gf_mul  # written from FORMAT.md, independent of zfec


def test_coefficients_follow_the_documented_vandermonde_construction() -> None:
    # FORMAT.md: V[0] = (1, 0, ..., 0), V[r][c] = alpha^((r-1)*c) for r >= 1 with alpha = 2;
    # C = bottom rows of V * inverse(top k rows of V). Check C * V_top == V_bottom for a few shapes.
    def power(x: int, e: int) -> int:
        out = 1
        for _ in range(e):
            out = gf_mul(out, x)
        return out

    for n, m in [(1, 1), (3, 1), (4, 2), (7, 3)]:
        rows = [[1] + [0] * (n - 1)] + [[power(2, (r - 1) * c) for c in range(n)] for r in range(1, n + m)]
        coeffs = erasure.coefficients(n, m)
        for j in range(m):
            for c in range(n):
                acc = 0
                for i in range(n):
                    acc ^= gf_mul(coeffs[j][i], rows[i][c])
                assert acc == rows[n + j][c], (n, m, j, c)


def test_parity_volumes_hold_the_documented_code_and_any_m_streams_rebuild(tmp_path: Path) -> None:
    sizes = [3 * MIB + 17, 5 * MIB + 1, 1 * MIB, 4 * MIB - 3]
    manifest = make_set(tmp_path, sizes)
    result = add_parity_volumes(lambda k: tmp_path / layout.volume_folder(manifest.set_id, k), manifest,
                                ParityOptions(parity_volumes=2, chunk_size=MIB + 5))
    assert result.format_version == 2 and result.block_size == BLOCK_SIZE
    assert result.parity is not None and result.parity.length == max(sum(f.size for f in v.files)
                                                                      for v in manifest.volumes)
    assert [v.role for v in result.volumes] == ["data"] * 4 + ["parity"] * 2
    assert all(f.blocks for v in result.volumes for f in v.files if f.size)
    check_parity(result)
    # The manifest survives its own parser byte for byte.
    assert dump_manifest(parse_manifest(dump_manifest(result), "m")) == dump_manifest(result)

    streams = [erasure.PayloadStream(segments(v), folder_opener(tmp_path / v.folder)) for v in result.volumes]
    length = result.parity.length
    full = [s.read_at(0, length) for s in streams]
    coeffs = result.parity.coefficients
    for p in (0, 1, 4 * MIB + 3, length - 1):
        for j in range(2):
            want = functools.reduce(lambda a, b: a ^ b, (gf_mul(coeffs[j][i], full[i][p]) for i in range(4)))
            assert full[4 + j][p] == want
    window = (2 * MIB - 10, 70_000)
    pieces = [f[window[0]:window[0] + window[1]] for f in full]
    for lost in itertools.combinations(range(6), 2):
        have = {i: pieces[i] for i in range(6) if i not in lost}
        rebuilt = erasure.rebuild(4, 2, have, lost)
        assert all(rebuilt[i] == pieces[i] for i in lost), lost
    for s in streams:
        s.close()


def test_a_data_file_changed_before_parity_stops_the_archive(tmp_path: Path) -> None:
    manifest = make_set(tmp_path, [MIB, MIB])
    part = tmp_path / manifest.volumes[1].folder / manifest.volumes[1].files[0].path
    data = bytearray(part.read_bytes())
    data[1000] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="changed after it was written"):
        add_parity_volumes(lambda k: tmp_path / layout.volume_folder(manifest.set_id, k), manifest,
                           ParityOptions(parity_volumes=1))


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["parity"].update(length=d["parity"]["length"] + 1), "parity.length"),
    (lambda d: d["parity"].update(coefficients=[[1]]), "parity.coefficients"),
    (lambda d: d["volumes"][0].update(role="parity"), "volumes[0].files[0].path"),
    (lambda d: d.update(parity=None), "parity"),
    (lambda d: d["volumes"][2]["files"][1].update(path="blobs/layer0001.tar.zst.part009"), "volumes[2].files[1].path"),
    (lambda d: d["volumes"][0]["files"][0]["blocks"].pop(), "volumes[0].files[0].blocks"),
    (lambda d: d.update(format_version=1), "format_version"),
    (lambda d: d.update(block_size=None), "block_size"),
])
def test_inconsistent_parity_section_is_refused(tmp_path: Path, change, field: str) -> None:
    manifest = make_set(tmp_path, [2 * MIB, MIB])
    result = add_parity_volumes(lambda k: tmp_path / layout.volume_folder(manifest.set_id, k), manifest,
                                ParityOptions(parity_volumes=1))
    data = json.loads(dump_manifest(result))
    change(data)
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(data).encode(), "m")
    assert info.value.field == field, str(info.value)


def test_foreign_coefficients_are_refused(tmp_path: Path) -> None:
    manifest = make_set(tmp_path, [MIB, MIB])
    result = add_parity_volumes(lambda k: tmp_path / layout.volume_folder(manifest.set_id, k), manifest,
                                ParityOptions(parity_volumes=1))
    assert result.parity is not None
    forged = result.model_copy(update={"parity": result.parity.model_copy(update={"coefficients": [[1, 1]]})})
    with pytest.raises(ArchiveError, match="coefficients"):
        check_parity(forged)
