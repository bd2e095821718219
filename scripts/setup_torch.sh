#!/bin/sh
# .venv-torch: CPU torch plus the model sources the runtime's torch engines import (fish-speech 1.2), for
# their tests and benchmarks. Called by scripts/setup.sh; safe to run again (a stamp of the inputs).
# Everything comes from this host's pip configuration (torch's CPU wheel from its find-links folder) and the
# source zips in IMGBUILD_FIXTURES (default ../shared/fixtures beside the checkout).
set -eu
cd "$(dirname "$0")/.."

fixtures=${IMGBUILD_FIXTURES:-../shared/fixtures}
fish_zip=$fixtures/fish-speech-v1.2.zip
if [ ! -f "$fish_zip" ]; then
    # Not fatal: only the torch engines' tests need it, and under CI they fail, naming .venv-torch.
    echo "setup_torch.sh: $fish_zip not found; set IMGBUILD_FIXTURES to the folder of the source zips;" \
        "skipping .venv-torch" >&2
    exit 0
fi
venv=.venv-torch
stamp=$venv/.imgbuild-installed
want=$(cat scripts/requirements-torch.txt pyproject.toml runtime/pyproject.toml "$fish_zip" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && $venv/bin/python -c 'import torch, fish_speech, imgbuild_runtime' 2>/dev/null; then
    echo "setup_torch.sh: ready ($venv)"
    exit 0
fi
[ -x $venv/bin/python ] || "${PYTHON:-python3}" -m venv $venv
log=$venv/pip-install.log
if ! $venv/bin/python -m pip install -r scripts/requirements-torch.txt -e '.[test]' -e './runtime[test]' > $log 2>&1; then
    tail -n 40 $log >&2
    echo "setup_torch.sh: pip install failed; full log in $log" >&2
    exit 1
fi
# torchaudio 2.11's C++ library does not load beside torch 2.13, and fish-speech's inference does not need
# it (only torchaudio.functional and MelScale, which are pure torch); without the files torchaudio imports.
rm -f $venv/lib/python3*/site-packages/torchaudio/lib/*.so
# pyrootutils ships its own tests as a top-level `tests` package, which would hide this repository's tests/.
rm -rf $venv/lib/python3*/site-packages/tests
# fish-speech 1.2's source tree, as its images hold it: `pip install -e` makes fish_speech importable and
# the engine finds tools/ beside it.
src=$venv/src/fish-speech-1.2
if [ ! -f "$src/pyproject.toml" ]; then
    rm -rf "$src.partial" && mkdir -p "$src.partial"
    "$venv/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$fish_zip" "$src.partial"
    mv "$src.partial"/fish-speech-1.2 "$src" && rm -rf "$src.partial"
fi
$venv/bin/python -m pip install --no-deps -e "$src" >> $log 2>&1
$venv/bin/python -c 'import torch, torchaudio.functional, fish_speech.models.text2semantic.llama, imgbuild_runtime'
echo "$want" > "$stamp"
echo "setup_torch.sh: ready ($venv, torch $($venv/bin/python -c 'import torch; print(torch.__version__)'))"
