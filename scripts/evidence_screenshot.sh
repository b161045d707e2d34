#!/usr/bin/env bash
# `make evidence-screenshot`: remakes docs/evidence-report.png, the README's picture of the
# evidence report. A `make run`-like session on topics of its own (so a demo or the tests
# on the same broker are left alone): the local broker, the topics, a worker and the
# synthetic workload for EVIDENCE_SECONDS (120) at DEMO_RATE (500 events/s), and, when
# Debian's `prometheus` is installed (make prometheus), the canary, a continuous verifier
# and a Prometheus scraping them and the worker; then `python -m stream evidence` over the
# session (the verifier runs in it; --prometheus when there is one), and Debian's
# Chromium, headless, renders the report's first screens. Not part of `make test`.
# Needs `chromium` (apt-get install -y chromium). Leaves the broker running; removes its
# topics, its processes' state and its Chromium profile.
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
# EVIDENCE_HTML=FILE keeps a copy of the whole report.

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
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
STREAM_WEB_PORT="$(free_port)"
export STREAM_WEB_PORT
PROMETHEUS="$(command -v prometheus || true)"

worker="" canary="" others=()
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cleanup() {
    trap - INT TERM EXIT
    for pid in $canary "${others[@]}" $worker; do stop "$pid"; done
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
# Until the worker is ready (its partitions assigned, its state caught up).
"$PY" - <<'PY'
import os, time, urllib.request

deadline = time.monotonic() + 120
while True:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{os.environ['STREAM_WEB_PORT']}/ready", timeout=2).status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("evidence-screenshot: the worker was not ready within 120 s")
    time.sleep(0.5)
PY
prometheus_args=()
if [ -n "$PROMETHEUS" ]; then
    verifier_port="$(free_port)" canary_port="$(free_port)" prometheus_port="$(free_port)"
    "$PY" -m stream verify --interval 15 --port "$verifier_port" >"$work/verifier.log" 2>&1 &
    others+=($!)
    "$PY" -m stream canary --port "$canary_port" --post-interval 5 --probe-interval 10 >"$work/canary.log" 2>&1 &
    canary=$!
    cat >"$work/prometheus.yml" <<YAML
global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - {job_name: eligibility-filter, static_configs: [{targets: ["127.0.0.1:$STREAM_WEB_PORT"]}]}
  - {job_name: eligibility-verifier, static_configs: [{targets: ["127.0.0.1:$verifier_port"]}]}
  - {job_name: eligibility-canary, static_configs: [{targets: ["127.0.0.1:$canary_port"]}]}
YAML
    "$PROMETHEUS" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
        --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 &
    others+=($!)
    prometheus_args=(--prometheus "http://127.0.0.1:$prometheus_port")
    echo "evidence-screenshot: with the canary, a continuous verifier and Prometheus on :$prometheus_port"
fi
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
if [ -n "$canary" ]; then stop "$canary"; canary=""; fi
if [ -n "$PROMETHEUS" ]; then
    # Until Prometheus has scraped every target once more after the workload.
    "$PY" - "$prometheus_port" <<'PY'
import json, sys, time, urllib.parse, urllib.request

after, deadline = time.time(), time.monotonic() + 60
query = urllib.parse.urlencode({"query": "min(timestamp(up))"})
while time.monotonic() < deadline:
    time.sleep(0.5)
    try:
        body = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/v1/query?{query}", timeout=2))
    except OSError:
        continue
    result = body["data"]["result"]
    if result and float(result[0]["value"][1]) > after:
        break
PY
fi

"$PY" -m stream evidence --since "$since" --out "$work/evidence.html" --json "$work/evidence.json" "${prometheus_args[@]}"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$work/chromium" \
    --window-size="$WINDOW" --screenshot="$OUT" "file://$work/evidence.html" 2>"$work/chromium.log" \
    || { cat "$work/chromium.log" >&2; exit 1; }
if [ -n "${EVIDENCE_HTML:-}" ]; then cp "$work/evidence.html" "$EVIDENCE_HTML"; fi   # the whole report, to look at
echo "evidence-screenshot: $OUT ($(stat -c %s "$OUT") bytes)"
