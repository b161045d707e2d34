#!/usr/bin/env bash
# Installs Debian's `libjemalloc2` when the dynamic loader cannot find libjemalloc.so.2:
# the image runs every process on jemalloc (Dockerfile, stream/cli.py's JEMALLOC_ENV),
# and `make bench` gives the processes it measures the same allocator where the library
# is installed (bench/common.py's allocator_env). Without it the benchmark measures
# glibc's malloc, whose heap fragments over the soak (bench/notes.md, "The allocator").
# Idempotent: does nothing when the library is there.
set -euo pipefail

found() { /sbin/ldconfig -p 2>/dev/null | grep -q 'libjemalloc\.so\.2 '; }

if found; then
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-jemalloc: need root (or sudo) to apt-get install libjemalloc2" >&2; exit 1; }
    SUDO=(sudo)
fi
command -v apt-get >/dev/null || {
    echo "install-jemalloc: no apt-get: install jemalloc (libjemalloc.so.2) by hand" >&2
    exit 1
}

echo "install-jemalloc: installing Debian's libjemalloc2"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends libjemalloc2 >/dev/null

found || { echo "install-jemalloc: libjemalloc.so.2 still not found" >&2; exit 1; }
