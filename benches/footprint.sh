#!/usr/bin/env bash
# Footprint of the agent against Debian's prometheus-node-exporter, measured in the same run:
# all run for DURATION seconds; the agent samples at 1 Hz with one live mTLS subscriber
# (`jex-agent ctl telemetry --follow`), its /metrics off; a second agent does the same with its
# /metrics scraped every 15 s with curl (a usual Prometheus scrape interval); two node_exporters
# are scraped once a second with curl: one with its default collectors, one limited to the
# agent's data (cpu, meminfo, loadavg, pressure).
# Reports peak RSS (VmHWM) and CPU time (utime+stime) of each server process.
#
#   bash benches/footprint.sh            # 60 s
#   DURATION=10 bash benches/footprint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
NE=/usr/bin/prometheus-node-exporter
if [ ! -x "$NE" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-node-exporter curl >/dev/null
fi
cargo build --release -q -p jex-agent --features dev  # for `pki dev`
BIN=${CARGO_TARGET_DIR:-target}/release/jex-agent
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$BIN" pki dev --out "$WORK/pki" >/dev/null
PORT=$((20000 + RANDOM % 20000))
# agent_config NAME GRPC_PORT METRICS_TABLE
agent_config() {
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1/agent.toml" <<TOML
state_dir = "$WORK/$1/state"
[server]
listen = "127.0.0.1:$2"
status_socket = "$WORK/$1/agent.sock"
[tls]
cert = "$WORK/pki/agent.pem"
key = "$WORK/pki/agent.key"
client_ca = "$WORK/pki/ca.pem"
[roles]
controller = ["spiffe://fleet.example/controller"]
[telemetry]
interval_ms = 1000
[telemetry.spool]
dir = "$WORK/$1/spool"
[logging]
dir = "$WORK/$1/logs"
[metrics]
$3
TOML
}
MPORT=$((PORT + 4))
agent_config agent "$PORT" "enabled = false"
agent_config scraped "$((PORT + 3))" "listen = \"127.0.0.1:$MPORT\""
AGENT_LOG=warn "$BIN" run --config "$WORK/agent/agent.toml" 2>"$WORK/agent.err" &
AGENT=$!
AGENT_LOG=warn "$BIN" run --config "$WORK/scraped/agent.toml" 2>"$WORK/scraped.err" &
SCRAPED=$!
NEPORT=$((PORT + 1))
"$NE" --web.listen-address="127.0.0.1:$NEPORT" >"$WORK/ne.log" 2>&1 &
NEPID=$!
NELPORT=$((PORT + 2))
"$NE" --web.listen-address="127.0.0.1:$NELPORT" --collector.disable-defaults --collector.cpu \
  --collector.meminfo --collector.loadavg --collector.pressure >"$WORK/nel.log" 2>&1 &
NELPID=$!
sleep 1
for p in "$PORT" "$((PORT + 3))"; do
  "$BIN" ctl --agent "https://127.0.0.1:$p" --ca "$WORK/pki/ca.pem" --cert "$WORK/pki/controller.pem" \
    --key "$WORK/pki/controller.key" --server-name localhost telemetry --follow >"$WORK/stream.$p.out" &
done

# CPU time in nanoseconds, summed over every thread (schedstat is ns-precise; stat is 10 ms ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {print s}'; }
a0=$(cpu_ns $AGENT); s0=$(cpu_ns $SCRAPED); n0=$(cpu_ns $NEPID); l0=$(cpu_ns $NELPID)
scrapes=0
for i in $(seq "$DURATION"); do
  curl -s "http://127.0.0.1:$NEPORT/metrics" >/dev/null
  curl -s "http://127.0.0.1:$NELPORT/metrics" >/dev/null
  if [ $(((i - 1) % 15)) -eq 0 ]; then
    curl -sf "http://127.0.0.1:$MPORT/metrics" | grep -q '^jex_agent_build_info{' && scrapes=$((scrapes + 1))
  fi
  sleep 1
done
a1=$(cpu_ns $AGENT); s1=$(cpu_ns $SCRAPED); n1=$(cpu_ns $NEPID); l1=$(cpu_ns $NELPID)
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
records=$(grep -c '^seq=' "$WORK/stream.$PORT.out" || true)
printf '%-36s %12s %14s %16s\n' "process" "peak RSS" "CPU time" "CPU % of 1 core"
for p in "jex-agent:$AGENT:$a0:$a1" "jex-agent + /metrics every 15 s:$SCRAPED:$s0:$s1" \
  "node-exporter (defaults):$NEPID:$n0:$n1" \
  "node-exporter (cpu,meminfo,loadavg,pressure):$NELPID:$l0:$l1"; do
  IFS=: read -r name pid t0 t1 <<<"$p"
  ns=$((t1 - t0))
  printf '%-36s %9s KiB %11s ms %15s\n' "$name" "$(hwm "$pid")" "$((ns / 1000000))" \
    "$(awk -v t="$ns" -v d="$DURATION" 'BEGIN { printf "%.3f%%", t / 1e9 / d * 100 }')"
done
echo "duration ${DURATION}s; records received by the subscriber: $records; /metrics scrapes answered: $scrapes of $(((DURATION + 14) / 15)); $( "$NE" --version 2>&1 | head -1)"
