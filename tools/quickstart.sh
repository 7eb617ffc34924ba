#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12 machine, as root; both idempotent.
#   tools/quickstart.sh run    install what is missing, build, run the main job: pre-train a teacher on
#                              generated data, stream the rest through it frozen and continual (configs/demo.yaml)
#   tools/quickstart.sh test   install what is missing, build, run the whole test suite (ctest), then the
#                              torch-free tests under AddressSanitizer and UBSan (tools/sanitize-check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0  # the GPU nodes run 2.11.0 with CUDA 13; the wheel is built for CUDA 13.0
DEBIAN_PACKAGES=(build-essential cmake ninja-build ccache git python3 python3-venv zlib1g-dev
  libyaml-cpp-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libcli11-dev nlohmann-json3-dev
  libjemalloc-dev librdkafka-dev libboost-dev libgloo-dev pkg-config curl)

log() { echo "[quickstart] $*" >&2; }

install_system_packages() {
  local missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# LibTorch comes from the PyPI torch wheel (CUDA-enabled) in a project-local virtual environment.
install_torch() {
  if .venv/bin/python -W ignore -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    return
  fi
  log "installing torch==$TORCH_VERSION into .venv (a few GB the first time)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "torch==$TORCH_VERSION"
}

build() {
  local torch_cmake
  torch_cmake=$(.venv/bin/python -W ignore -c 'import torch; print(torch.utils.cmake_prefix_path)')
  if [[ ! -f build/build.ninja ]]; then
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_cmake" >build-configure.log 2>&1 ||
      { cat build-configure.log; exit 1; }
    rm -f build-configure.log
  fi
  cmake --build build -j "$(nproc)"
}

case "${1:-}" in
  run)
    install_system_packages; install_torch; build
    ./build/freshrec stream --config configs/demo.yaml --compare-frozen "${@:2}"
    ;;
  test)
    install_system_packages; install_torch; build
    ctest --test-dir build --output-on-failure -j 1
    bash tools/sanitize-check.sh
    ;;
  *)
    echo "usage: $0 run|test" >&2; exit 2 ;;
esac
