#!/usr/bin/env bash
# `make evidence-screenshot`: remakes docs/evidence-report.png, the README's picture of the
# evidence report. A `make run`-like session on topics of its own (so a demo or the tests
# on the same broker are left alone): the local broker, the topics, a worker and the
# synthetic workload for EVIDENCE_SECONDS (120) at DEMO_RATE (500 events/s); then
# `python -m stream evidence` over the session (the verifier runs in it), and Debian's
# Chromium, headless, renders the report's first screens. Not part of `make test`.
# Needs `chromium` (apt-get install -y chromium). Leaves the broker running; removes its
# topics, its worker's state and its Chromium profile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=.venv/bin/python
CHROMIUM="${CHROMIUM:-chromium}"
SECONDS_RUN="${EVIDENCE_SECONDS:-120}"
RATE="${DEMO_RATE:-500}"
ACCOUNTS="${DEMO_ACCOUNTS:-3000}"
OUT="${EVIDENCE_PNG:-docs/evidence-report.png}"
# The first two screens of a laptop, at a width the report is laid out for.
WINDOW="${EVIDENCE_WINDOW:-1000,2000}"

command -v "$CHROMIUM" >/dev/null || { echo "evidence-screenshot: no $CHROMIUM (apt-get install -y chromium)" >&2; exit 2; }

if ! (exec 3<>"/dev/tcp/127.0.0.1/${KAFKA_PORT:-9092}") 2>/dev/null; then
    scripts/kafka.sh start
fi
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export STREAM_DEV_MODE=1   # the public development pseudonym key, as `make run`

tag="evshot-$(date +%s)"
work="$(mktemp -d)"
export STREAM_DATA_DIR="$work/data" STREAM_GROUP_ID="$tag"
for name in CONTENT_EVENTS ACCOUNTS_PROFILES ACCOUNTS_OBJECTIONS TRAINING_FEED ELIGIBILITY_DECISIONS \
    CONTENT_EVENTS_DLQ ELIGIBILITY_DEFERRED ELIGIBILITY_PUBLISHED ELIGIBILITY_ITEMS TRAINING_RETRACTIONS; do
    default="$(echo "$name" | tr 'A-Z_' 'a-z.')"
    export "STREAM_TOPIC_$name=$tag.$default"
done
STREAM_WEB_PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export STREAM_WEB_PORT

worker=""
cleanup() {
    trap - INT TERM EXIT
    if [ -n "$worker" ]; then kill -TERM "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; fi
    "$PY" - "$tag." <<'EOF' || true
import asyncio, os, sys
from aiokafka.admin import AIOKafkaAdminClient

async def main() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"])
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(sys.argv[1])]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()

asyncio.run(main())
EOF
    rm -rf "$work"
}
trap cleanup INT TERM EXIT

mkdir -p "$STREAM_DATA_DIR"
"$PY" -m stream topics create >/dev/null
since="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
"$PY" -m stream worker >"$work/worker.log" 2>&1 &
worker=$!
echo "evidence-screenshot: worker on topics $tag.*, workload for ${SECONDS_RUN}s at $RATE events/s"
"$PY" -m stream generate --rate "$RATE" --count "$((RATE * SECONDS_RUN))" --accounts "$ACCOUNTS" --no-progress \
    >"$work/generator.log" 2>&1

# Until the worker has consumed everything: its content lag is 0 twice in a row.
"$PY" - <<'EOF'
import os, re, time, urllib.request

url = f"http://127.0.0.1:{os.environ['STREAM_WEB_PORT']}/metrics"
zero, deadline = 0, time.monotonic() + 300
while zero < 2:
    if time.monotonic() > deadline:
        raise SystemExit("evidence-screenshot: the worker did not catch up within 300 s")
    time.sleep(1)
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        continue
    lags = [float(v) for v in re.findall(r'^eligibility_consumer_lag_records\{input="content".*\} (\S+)$', text, re.M)]
    zero = zero + 1 if lags and sum(lags) == 0 else 0
EOF
kill -TERM "$worker" && wait "$worker" || true
worker=""

"$PY" -m stream evidence --since "$since" --out "$work/evidence.html" --json "$work/evidence.json"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$work/chromium" \
    --window-size="$WINDOW" --screenshot="$OUT" "file://$work/evidence.html" 2>"$work/chromium.log" \
    || { cat "$work/chromium.log" >&2; exit 1; }
echo "evidence-screenshot: $OUT ($(stat -c %s "$OUT") bytes)"
