#!/usr/bin/env bash
# Installs the Debian packages the project needs (only those missing; safe to re-run), then configures
# and builds everything into build/ (binaries in build/bin/).
#   bash tools/setup.sh            # Release build
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
  libsentencepiece-dev sentencepiece
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libopenmpi-dev openmpi-bin
  slurmctld slurmd slurm-client munge
  python3 python3-torch python3-numpy python3-sentencepiece
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build
