#!/usr/bin/env bash
# Installs Debian's `prometheus` package when /usr/bin/promtool or /usr/bin/prometheus is
# missing: promtool checks and unit-tests deploy/prometheus/rules.yml, and the Prometheus
# server scrapes a real worker in tests/integration/test_prometheus.py. Idempotent: does
# nothing when both are there.
#
# The package ships a system service; this script never lets it start (tests run their
# own server on a free port with a temporary TSDB): a policy-rc.d that refuses every
# start is in place during the install, and where systemd runs the unit is disabled and
# stopped afterwards.
set -euo pipefail

PROMTOOL=/usr/bin/promtool
PROMETHEUS=/usr/bin/prometheus

if [[ -x $PROMTOOL && -x $PROMETHEUS ]]; then
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-prometheus: need root (or sudo) to apt-get install prometheus" >&2; exit 1; }
    SUDO=(sudo)
fi
command -v apt-get >/dev/null || {
    echo "install-prometheus: no apt-get: install Prometheus (promtool and prometheus in /usr/bin) by hand" >&2
    exit 1
}

POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [[ ! -e $POLICY ]]; then
    # 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke start nothing.
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    ADDED_POLICY=1
fi
cleanup() { if [[ $ADDED_POLICY == 1 ]]; then "${SUDO[@]}" rm -f "$POLICY"; fi; }
trap cleanup EXIT

echo "install-prometheus: installing Debian's prometheus package (promtool, prometheus)"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# No recommends: prometheus-node-exporter is another service nobody here needs.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null

if [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

[[ -x $PROMTOOL && -x $PROMETHEUS ]] || { echo "install-prometheus: $PROMTOOL or $PROMETHEUS still missing" >&2; exit 1; }
"$PROMTOOL" --version | head -1
