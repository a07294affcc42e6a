#!/usr/bin/env bash
# Installs recon into ./.venv on a fresh Debian/Ubuntu machine.
#   scripts/install.sh        runtime only
#   scripts/install.sh dev    plus test tools, Triton (CPU interpreter), the ROS 1 Debian packages and Chromium
# RECON_TORCH chooses the torch requirement (default torch==2.13.0: on a CPU-only machine that ships the
# CPU wheel locally it is cheap; from PyPI on Linux it is the CUDA build GPU users want). For a CPU-only
# install elsewhere: RECON_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_packages=()
# open3d's wheel links against the system libusb-1.0 (import open3d fails without it).
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || apt_packages+=(libusb-1.0-0)
if [ "$extra" = "dev" ]; then
  for list in scripts/ros-packages.txt scripts/dev-packages.txt; do
    [ -f "$list" ] || continue
    while read -r pkg; do
      [ -n "$pkg" ] && ! dpkg -s "$pkg" >/dev/null 2>&1 && apt_packages+=("$pkg")
    done < <(grep -v '^#' "$list")
  done
fi
if [ "${#apt_packages[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# shellcheck disable=SC2086
.venv/bin/pip install -q ${RECON_TORCH:-torch==2.13.0}
if [ -n "$extra" ]; then spec=".[$extra]"; else spec="."; fi
.venv/bin/pip install -q -e "$spec"
echo "recon installed in $(pwd)/.venv"
