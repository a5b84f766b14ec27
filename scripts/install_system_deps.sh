#!/usr/bin/env bash
# System packages the arm tests need: an aarch64 cross compiler and qemu-user.
# Idempotent; does nothing when they are present; skips (tests then skip with a reason) without apt or root.
set -u
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null 2>&1 || command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user-static)
command -v unzip >/dev/null 2>&1 || need+=(unzip)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "install_system_deps: cannot install ${need[*]} (no apt-get or not root); arm tests will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "install_system_deps: apt-get install ${need[*]} failed; arm tests will skip" >&2
exit 0
