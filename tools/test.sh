#!/usr/bin/env bash
# Sets up (tools/setup.sh), then runs every test: the CTest suite of build/ (unit tests, PyTorch
# reference comparisons), then the safetensors fuzz test again from an AddressSanitizer build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh

echo "== AddressSanitizer build of the checkpoint reader and its fuzz test"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE=address -DMOE_ENABLE_CUDA=OFF >/dev/null
ninja -C build-asan safetensors_fuzz_test checkpoint_test
ASAN_OPTIONS=detect_leaks=1 build-asan/bin/safetensors_fuzz_test
ASAN_OPTIONS=detect_leaks=1 build-asan/bin/checkpoint_test

echo "== CTest"
cd build
ctest --output-on-failure -j2 --timeout 900
