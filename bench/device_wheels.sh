#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels bench/gpu_check.sh needs on the lent GPU machine, which cannot
# download anything: its image has Python 3.12 with torch, transformers, numpy, OpenCV, onnxruntime, pytest
# and most of their needs (../.library/device/KINDS.md), but not DiffSynth, the annotators, Real-ESRGAN,
# NudeNet, or the bot-side packages the test suite's conftest imports. Run it here, then carry `.whl`:
#
#   bench/device_wheels.sh        # about 40 MB; gpu_check.sh installs .whl/*.whl when it finds them
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl

# Exact versions: the ones this checkout is tested with (one version of each, or the install stops).
version() { "$PYTHON" -m pip show "$1" | sed -n 's/^Version: //p'; }
packages=(
    diffsynth modelscope modelscope-hub ftfy wcwidth  # the pipeline
    controlnet_aux importlib_metadata realesrgan facexlib gfpgan filterpy addict future yapf platformdirs lmdb
    cryptography cffi pycparser truststore  # what modelscope-hub imports
    nudenet  # NSFW screening
    discord.py aiosqlite google-re2 regex redis simcord pytest-asyncio  # what tests/conftest.py imports
)
pins=()
for package in "${packages[@]}"; do
    pins+=("$package==$(version "$package")")
done

platforms=()
for n in 17 27 28 31 34; do
    platforms+=(--platform "manylinux_2_${n}_x86_64")
done
platforms+=(--platform manylinux2014_x86_64)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${pins[@]}"
# basicsr publishes only an sdist: build its (pure Python) wheel here.
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl "basicsr==$(version basicsr)"
du -sh .whl
ls .whl
