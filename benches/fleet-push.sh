#!/usr/bin/env bash
# The largest fleet one relay holds on this machine, pushed until it breaks. For each size of
# SIZES it starts that many simulated hosts (release jex-sim at 1 Hz; at most PER_SIM hosts per
# process under the open-file limit, the later processes joining the first's CA with --ca and
# --first-host, each on its own 127.K.0.0/16), then runs benches/relay.sh on them: the relay's
# CPU and peak RSS, the whole machine's busy share and nats-server's CPU, lateness p50/p99/max,
# errors, and the backfill of DOWNTIME seconds. A size is held while lag p99 stays under one
# sampling interval (1 s) with no publish or connect error. Everything (simulators, relay,
# nats-server) shares this machine's cores: where it breaks says which of them ran out.
# SIM_NICE=19 runs the simulators at the lowest CPU priority, so that the relay and nats-server
# get the cores first: the relay's own limit, apart from the simulators' cost.
#
#   bash benches/fleet-push.sh                          # SIZES="2000 4000 6000 8000"
#   SIZES="3000 5000" DURATION=30 DOWNTIME=60 bash benches/fleet-push.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"2000 4000 6000 8000"}
PER_SIM=${PER_SIM:-1400}
SIM_NICE=${SIM_NICE:-0}
DURATION=${DURATION:-60}
DOWNTIME=${DOWNTIME:-60}
cargo build --release -q -p jex-sim -p jex-relay
SIM=${CARGO_TARGET_DIR:-target}/release/jex-sim
RELAY=${CARGO_TARGET_DIR:-target}/release/jex-relay
WORK=
pids=()
stop_sims() {
  ((${#pids[@]})) && kill -TERM "${pids[@]}" 2>/dev/null || true
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  [ -n "$WORK" ] && rm -rf "$WORK"
  WORK=
}
trap stop_sims EXIT

for N in $SIZES; do
  WORK=$(mktemp -d -p /dev/shm jex-push.XXXXXX)
  k=0
  first=1
  t0=$SECONDS
  while ((first <= N)); do
    n=$((N - first + 1))
    ((n > PER_SIM)) && n=$PER_SIM
    args=(run --hosts "$n" --dir "$WORK/s$k" --first-host "$first" --base-ip "127.$((k + 1)).0.1"
      --print-relay-config "$WORK/s$k.toml")
    ((k > 0)) && args+=(--ca "$WORK/s0")
    nice -n "$SIM_NICE" "$SIM" "${args[@]}" 2>"$WORK/s$k.log" &
    pids+=($!)
    until [ -s "$WORK/s$k.toml" ]; do
      kill -0 "${pids[-1]}" 2>/dev/null || { echo "simulator $k did not start:" >&2; tail "$WORK/s$k.log" >&2; exit 1; }
      sleep 0.5
    done
    first=$((first + n))
    k=$((k + 1))
  done
  # One host list: the first simulator's [tls] (its observer certificate, the shared CA) and
  # every simulator's [[hosts]].
  python3 - "$WORK" "$k" <<'PY'
import re, sys
work, k = sys.argv[1], int(sys.argv[2])
text = open(f"{work}/s0.toml").read()
for i in range(1, k):
    other = open(f"{work}/s{i}.toml").read()
    text += "\n" + other[other.index("[[hosts]]"):]
open(f"{work}/relay.toml", "w").write(text)
PY
  echo "== [$(date +%T)] $N simulated hosts in $k simulator process(es) (nice $SIM_NICE), started in $((SECONDS - t0)) s"
  RELAY_BIN=$RELAY DURATION=$DURATION DOWNTIME=$DOWNTIME bash benches/relay.sh "$WORK/relay.toml" ||
    echo "== relay.sh failed at $N hosts"
  echo "== [$(date +%T)] stopping the simulators"
  stop_sims
  echo "== [$(date +%T)] stopped"
done
