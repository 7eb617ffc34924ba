#!/usr/bin/env bash
# The device check for a GPU machine without a package registry (recipe: ../shared/docs/GPU-BUILD.md).
#   here:   tools/gpu-check.sh fetch        Debian packages the build needs, into .deps/debs, and the
#                                           ML-1M file into .deps/data (both git-ignored; data never committed)
#   there:  tools/gpu-check.sh run OUT      unpack them, build with the machine's PyTorch, then run the
#                                           torch tests (CUDA ones included), `bench kernels` on the GPU,
#                                           the demo training on the GPU and on the CPU, and the ML-1M
#                                           teacher on the GPU; logs to OUT
# Through the device tool: carry [".deps"] and run `bash tools/gpu-check.sh run $OUT`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEBS=(libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libgtest-dev libgmock-dev
  googletest libcli11-dev nlohmann-json3-dev libjemalloc-dev libjemalloc2 zlib1g-dev librdkafka-dev librdkafka1
  librdkafka++1)

case "${1:-}" in
  fetch)
    rm -rf .deps/debs && mkdir -p .deps/debs
    (cd .deps/debs && apt-get download "${DEBS[@]}")
    echo "fetched $(ls .deps/debs | wc -l) packages into .deps/debs ($(du -sh .deps/debs | cut -f1))"
    if [[ -f ../shared/data/ml-1m-sasrec/ml-1m.txt ]]; then
      mkdir -p .deps/data && cp ../shared/data/ml-1m-sasrec/ml-1m.txt .deps/data/
    else
      echo "../shared/data/ml-1m-sasrec/ml-1m.txt not found: the ML-1M run will be skipped"
    fi
    ;;
  run)
    out=${2:?usage: $0 run OUT_DIR}
    mkdir -p "$out"
    prefix=/tmp/freshrec-deps
    for f in .deps/debs/*.deb; do dpkg-deb -x "$f" "$prefix"; done
    export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
    # The packages' .pc files say prefix=/usr: let pkg-config (librdkafka) look under the unpacked tree.
    export PKG_CONFIG_PATH="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$prefix"
    torch_cmake=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
    { nvidia-smi; python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; nvcc --version; } \
      >"$out/machine.txt" 2>&1 || true
    start=$(date +%s)
    cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix/usr;$torch_cmake" \
      -DFRESHREC_CUDA=ON >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
    cmake --build build-gpu -j "$(nproc)" >"$out/build.log" 2>&1 || { grep -m 20 -E "error|FAILED" "$out/build.log"; exit 1; }
    echo "build: $(( $(date +%s) - start )) s" | tee -a "$out/machine.txt"
    status=0
    ./build-gpu/test_torch 2>&1 | tail -40 >"$out/tests.txt" || status=1
    ./build-gpu/test_data >/dev/null 2>&1 || status=1
    ./build-gpu/freshrec bench kernels --device cuda >"$out/bench-kernels.txt" 2>&1 || status=1
    for device in cuda cpu; do
      ./build-gpu/freshrec train -c configs/demo.yaml train.device=$device train.output_dir=/tmp/freshrec-demo-$device \
        train.log_every_seconds=30 >"$out/train-$device.txt" 2>&1 || status=1
    done
    if [[ -f .deps/data/ml-1m.txt ]]; then  # bigger CE chunks: a GPU wants few, large matmuls
      ./build-gpu/freshrec train -c configs/ml1m-sasrec.yaml train.device=cuda data.path=.deps/data/ml-1m.txt \
        train.ce_chunk=8192 train.output_dir=/tmp/freshrec-ml1m train.log_every_seconds=30 >"$out/ml1m-gpu.txt" 2>&1 ||
        status=1
      ./build-gpu/freshrec eval --checkpoint /tmp/freshrec-ml1m/best.pt data.path=.deps/data/ml-1m.txt \
        --json "$out/ml1m-eval.json" >>"$out/ml1m-gpu.txt" 2>&1 || status=1
    fi
    grep -h -E "passed|FAILED|Skipped" "$out/tests.txt" || true
    cat "$out/bench-kernels.txt"
    tail -n 8 "$out/train-cuda.txt" "$out/train-cpu.txt"
    [[ -f "$out/ml1m-gpu.txt" ]] && tail -n 12 "$out/ml1m-gpu.txt"
    exit $status
    ;;
  *)
    echo "usage: $0 fetch | run OUT_DIR" >&2; exit 2 ;;
esac
