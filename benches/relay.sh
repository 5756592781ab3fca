#!/usr/bin/env bash
# One jex-relay against a fleet described by a relay configuration (for instance the one
# `jex-sim` prints for the hosts it started: its [tls] and [[hosts]]), into a fresh
# `nats-server -js` started here. Runs the relay for DURATION seconds after every host is
# connected, then reports the relay's CPU time (utime+stime) and peak RSS (VmHWM), its
# jex_relay_host_lag_seconds across hosts and scrapes (p50, p99, max: the age of each host's
# newest record in JetStream at the scrape, so at most one sampling interval plus the lateness),
# its error counters, and the stream's messages and bytes per message. Then it stops the relay
# for DOWNTIME seconds and times the backfill: from the restart until every host's
# jex_relay_host_last_seq is back to the agent's newest record (lag under LAG_OK seconds; given
# up after BACKFILL_MAX seconds, default 600). Also: the whole machine's busy share and
# nats-server's CPU over the same window, and the relay's warnings by message.
#
#   bash benches/relay.sh HOSTS.toml                      # DURATION=60 DOWNTIME=600
#   DURATION=30 DOWNTIME=60 bash benches/relay.sh HOSTS.toml
#
# HOSTS.toml needs [tls] and [[hosts]] only; [jetstream] and [metrics] are replaced here.
# Needs Debian's nats-server (installed if missing), curl and python3. RELAY_BIN=path uses that
# binary instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: bash benches/relay.sh HOSTS.toml" >&2; exit 2; }
HOSTS=$(realpath "$1")
DURATION=${DURATION:-60}
DOWNTIME=${DOWNTIME:-600}
LAG_OK=${LAG_OK:-2}
BACKFILL_MAX=${BACKFILL_MAX:-600}
NATS=/usr/sbin/nats-server
if [ ! -x "$NATS" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server curl >/dev/null
fi
if [ -n "${RELAY_BIN:-}" ]; then
  BIN=$RELAY_BIN  # a relay built elsewhere (its figures are only meaningful for a release build)
else
  cargo build --release -q -p jex-relay
  BIN=${CARGO_TARGET_DIR:-target}/release/jex-relay
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

NATS_PORT=$((20000 + RANDOM % 20000))
METRICS_PORT=$((NATS_PORT + 1))
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -m $((NATS_PORT + 2)) -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
python3 - "$HOSTS" "$WORK/relay.toml" "$NATS_PORT" "$METRICS_PORT" <<'PY'
import re, sys
src, dst, nats, metrics = sys.argv[1:]
text = open(src).read()
# Drop the tables this script sets.
text = re.sub(r"(?ms)^\[(jetstream|metrics)\]\n.*?(?=^\[|\Z)", "", text)
text += f'\n[jetstream]\nurl = "nats://127.0.0.1:{nats}"\n\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
open(dst, "w").write(text)
PY
"$BIN" check-config --config "$WORK/relay.toml"
NHOSTS=$(grep -c '^\[\[hosts\]\]' "$WORK/relay.toml")

start_relay() {
  "$BIN" run --config "$WORK/relay.toml" 2>>"$WORK/relay.log" &
  RELAY=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" >/dev/null && return; sleep 0.1; done
  echo "the relay did not serve /metrics" >&2; tail "$WORK/relay.log" >&2; exit 1
}
scrape() { curl -sf "http://127.0.0.1:$METRICS_PORT/metrics"; }
connected() { scrape | grep -c '^jex_relay_host_connected{.*} 1$' || true; }
wait_connected() {
  local t0=$SECONDS
  until [ "$(connected)" -eq "$NHOSTS" ]; do
    ((SECONDS - t0 < 300)) || { echo "only $(connected) of $NHOSTS hosts connected after 300 s" >&2; exit 1; }
    sleep 0.5
  done
}
# The largest lag; infinite until every host has published since the relay started.
max_lag() {
  scrape | awk -v n="$NHOSTS" '/^jex_relay_host_lag_seconds\{/ { c++; if ($2 > m) m = $2 } END { print (c < n ? "inf" : m + 0) }'
}

start_relay
wait_connected
echo "== $NHOSTS hosts connected; measuring ${DURATION}s"
cpu0=$(awk '{print $14 + $15}' "/proc/$RELAY/stat")
ncpu0=$(awk '{print $14 + $15}' "/proc/$NATS_PID/stat")
# The whole machine: busy and total jiffies (all cores) from /proc/stat.
machine() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
read -r busy0 total0 < <(machine)
: >"$WORK/lags"
for _ in $(seq "$DURATION"); do
  scrape | awk '/^jex_relay_host_lag_seconds\{/ { print $2 }' >>"$WORK/lags"
  sleep 1
done
cpu1=$(awk '{print $14 + $15}' "/proc/$RELAY/stat")
ncpu1=$(awk '{print $14 + $15}' "/proc/$NATS_PID/stat")
read -r busy1 total1 < <(machine)
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$RELAY/status")
nhwm=$(awk '/^VmHWM/ {print $2}' "/proc/$NATS_PID/status")
echo "machine $(nproc) cores: $(( 100 * (busy1 - busy0) / (total1 - total0) )) % busy; nats-server CPU $(( (ncpu1 - ncpu0) / DURATION )) % of one core, peak RSS $nhwm KiB"
python3 - "$WORK/lags" "$cpu0" "$cpu1" "$DURATION" "$hwm" <<'PY'
import sys
path, c0, c1, dur, hwm = sys.argv[1:]
lags = sorted(float(x) for x in open(path) if x.strip())
q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))] if lags else float("nan")
cpu = (int(c1) - int(c0)) / 100
print(f"relay CPU {cpu:.2f} s in {dur} s ({100 * cpu / int(dur):.1f} % of one core), peak RSS {hwm} KiB")
print(f"lag (age of the newest stored record at a scrape), {len(lags)} readings: p50 {q(0.5):.3f} s, p99 {q(0.99):.3f} s, max {lags[-1] if lags else float('nan'):.3f} s")
PY
scrape | grep -E '^jex_relay_(publish|connect)_errors_total\{.*\} [1-9]' || echo "no publish or connect errors"
# What the relay warned about, by message (host-specific parts folded), most frequent first.
warnings() {
  python3 - "$WORK/relay.log" <<'PY'
import collections, json, re, sys
seen = collections.Counter()
for line in open(sys.argv[1], errors="replace"):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if v.get("level") in ("WARN", "ERROR"):
        m = re.sub(r"\d+", "N", v["fields"].get("message", ""))[:160]
        seen[(v["level"], m)] += 1
for (level, m), n in seen.most_common(5):
    print(f"  {n:6d} {level} {m}")
PY
}
echo "relay warnings and errors so far:"
warnings
curl -sf "http://127.0.0.1:$((NATS_PORT + 2))/jsz?streams=true" |
  python3 -c 'import json, sys
s = json.load(sys.stdin)
n, b = s["messages"], s["bytes"]
print("JetStream: %d messages, %.1f B/message" % (n, b / max(1, n)))'

echo "== relay down for ${DOWNTIME}s, then the backfill"
kill -TERM "$RELAY"; wait "$RELAY" || true
sleep "$DOWNTIME"
t0=$(date +%s.%N)
start_relay
wait_connected
caught_up=1
until [ "$(max_lag | awk -v ok="$LAG_OK" '{print ($1 != "inf" && $1 < ok)}')" = 1 ]; do
  if (($(date +%s) - ${t0%.*} > BACKFILL_MAX)); then caught_up=0; break; fi
  sleep 0.2
done
t1=$(date +%s.%N)
if ((caught_up)); then
  echo "backfill of ${DOWNTIME}s for $NHOSTS hosts: $(python3 -c "print(f'{$t1 - $t0:.1f}')") s until every host's lag is under ${LAG_OK}s"
else
  echo "backfill of ${DOWNTIME}s for $NHOSTS hosts: NOT caught up within ${BACKFILL_MAX}s (largest lag $(max_lag) s)"
fi
echo "relay warnings and errors in all:"
warnings
kill -TERM "$RELAY"; wait "$RELAY" || true
