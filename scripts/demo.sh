#!/usr/bin/env bash
# `make run`: the filter on an embedded default. Starts the local broker, creates the
# topics, runs the worker and a synthetic workload, and prints live counts of
# decisions by reason until Ctrl-C, which stops what it started (not the broker).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=.venv/bin/python
export STREAM_DEV_MODE="${STREAM_DEV_MODE:-1}"   # the public development pseudonym key
export STREAM_DATA_DIR="${STREAM_DATA_DIR:-./data}"
RATE="${DEMO_RATE:-500}"
ACCOUNTS="${DEMO_ACCOUNTS:-20000}"

# Reuse a broker that already answers (yours, or one the tests started); else start ours.
if (exec 3<>"/dev/tcp/127.0.0.1/${KAFKA_PORT:-9092}") 2>/dev/null; then
    echo "demo: a broker already answers on 127.0.0.1:${KAFKA_PORT:-9092}; using it"
    export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
else
    scripts/kafka.sh start
fi
"$PY" -m stream topics create

pids=()
cleanup() {
    trap - INT TERM EXIT
    echo "demo: stopping worker and generator"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

mkdir -p "$STREAM_DATA_DIR"
"$PY" -m stream worker >"$STREAM_DATA_DIR/worker.log" 2>&1 &
pids+=($!)
echo "demo: worker started (log: $STREAM_DATA_DIR/worker.log, metrics: http://localhost:${STREAM_WEB_PORT:-6066}/metrics)"
"$PY" -m stream generate --rate "$RATE" --accounts "$ACCOUNTS" --no-progress >"$STREAM_DATA_DIR/generator.log" 2>&1 &
pids+=($!)
echo "demo: generator at $RATE content events/s over $ACCOUNTS accounts (log: $STREAM_DATA_DIR/generator.log)"
echo "demo: live counts from the audit log (Ctrl-C to stop)"
# Warnings only: the live counts are the screen, not the reader client's INFO lines.
"$PY" -m stream --log-level warning watch --interval 2
