#!/usr/bin/env bash
# Cross-compiles the workspace for 64-bit ARM Linux (aarch64-unknown-linux-gnu: NVIDIA Grace in
# a GH200, AWS Graviton, Ampere) and runs its tests under qemu-user, on an x86-64 Debian or
# Ubuntu machine. Correctness only: qemu's speed says nothing about an ARM core's.
#
# Needs, once:
#   rustup target add aarch64-unknown-linux-gnu
#   apt install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
# The CLI tests start the `dinov2` binary themselves, so the kernel must hand aarch64 programs
# to qemu (binfmt_misc). qemu-user-binfmt (or qemu-user-static) registers that; where nothing
# did, as root:
#   mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc   # if not mounted
#   (the line in /usr/share/binfmts/qemu-aarch64, written to /proc/sys/fs/binfmt_misc/register)
#
# Usage: scripts/test-aarch64.sh [cargo test arguments], e.g. `-p dinov2-image`.
# The Python module's test is left out: it loads the module into the host's x86-64 python3.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $sysroot"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# For programs that tests start through binfmt_misc (qemu finds the ARM libc here).
export QEMU_LD_PREFIX=$sysroot
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cross}

if [ $# -eq 0 ]; then
    set -- --workspace --exclude dinov2-python
fi
exec cargo test --release --target "$target" "$@"
