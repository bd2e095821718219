"""The discs half of a recipe's end-to-end test: archive onto several volumes, verify, remove the images
from the engine, load-and-run from the volumes. The same steps for every recipe; the test checks its model.
"""

from __future__ import annotations

import time
from pathlib import Path

from imgbuild.archive.archive import ArchiveOptions, ArchiveResult, archive
from imgbuild.build.build import ImageResult
from imgbuild.discs.locate import locate_set
from imgbuild.engine.images import find_image
from imgbuild.restore.load import LoadOptions
from imgbuild.restore.run import RunOptions, RunResult, load_and_run
from imgbuild.restore.verify import verify_set
from tests.conftest import Cleanup, remove_image


def archive_and_reload(engine, cleanup: Cleanup, recipe_path: Path, images: list[ImageResult], out: Path,
                       media_size: int, times: dict[str, float]) -> tuple[ArchiveResult, RunResult, str]:
    """Archive the recipe's images into `out` (at least two volumes), verify them, remove `images` (app
    first) so the load is real, then load-and-run from the volumes until healthy. Returns the archive, the
    run (its container registered with `cleanup`) and the set's checkpoints lock text; adds step times."""
    mark = time.monotonic()
    archived = archive(engine, [str(recipe_path)], ArchiveOptions(out=out, media_size=media_size,
                                                                  catalog=out.parent / "catalog"))
    times["archive"] = time.monotonic() - mark
    assert len(archived.volumes) >= 2, f"{archived.compressed_bytes} bytes fit on one volume: lower media_size"
    lock_text = locate_set([out]).manifest.recipe.checkpoints_lock.text
    mark = time.monotonic()
    report = verify_set([out])
    times["verify"] = time.monotonic() - mark
    assert report.ok and report.volumes_checked == tuple(range(1, len(archived.volumes) + 1))

    for image in images:
        remove_image(engine, image.tag)
        assert find_image(engine, image.id) is None, f"{image.tag} is still in the engine: the load would be moot"
    mark = time.monotonic()
    result = load_and_run(engine, [out], LoadOptions(), RunOptions(port=0, detach=True))
    cleanup.container(result.container_id)
    times["load and healthy"] = time.monotonic() - mark
    times["healthy after start"] = result.seconds_to_healthy
    assert result.image_id == images[0].id and {i.status for i in result.load.images} == {"loaded"}
    return archived, result, lock_text or ""
