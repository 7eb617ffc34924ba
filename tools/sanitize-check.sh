#!/usr/bin/env bash
# The torch-free code and its tests (test_data: config, readers, stream sources, history store, metrics,
# charts, data preparation, durable writes, and the seeded random inputs of tests/test_fuzz.cpp) built
# with AddressSanitizer and UndefinedBehaviorSanitizer, and run: any memory error or undefined
# behaviour fails. Run by `tools/quickstart.sh test` after the main suite; needs .venv (CMake's
# configure step finds LibTorch, though nothing here links it).
set -euo pipefail
cd "$(dirname "$0")/.."
torch_cmake=$(.venv/bin/python -W ignore -c 'import torch; print(torch.utils.cmake_prefix_path)')
if [[ ! -f build-sanitize/build.ninja ]]; then
  cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFRESHREC_SANITIZE=ON \
    -DFRESHREC_CUDA=OFF -DFRESHREC_PCH=OFF -DCMAKE_PREFIX_PATH="$torch_cmake" >build-sanitize.log 2>&1 ||
    { cat build-sanitize.log; exit 1; }
fi
cmake --build build-sanitize --target test_data -j "$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
./build-sanitize/test_data --gtest_brief=1
echo "sanitize-check: test_data passed under AddressSanitizer and UndefinedBehaviorSanitizer"
