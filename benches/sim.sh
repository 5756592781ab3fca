#!/usr/bin/env bash
# The simulator's own footprint: HOSTS simulated hosts (default 1,000) in one `jex-sim run`
# process (release build), on a tmpfs, sampling at 1 Hz with nobody following. Reports the time
# to start them all (PKI, files, 1,000 real agents), then over DURATION seconds (default 60) the
# CPU time of the process (utime+stime from /proc/PID/stat), its RSS at the end and at its peak
# (VmRSS, VmHWM), its threads and open files, the spool bytes written, the time one `restart`
# takes over the control socket, and the time SIGTERM takes to stop every agent.
#
#   bash benches/sim.sh
#   HOSTS=200 DURATION=10 bash benches/sim.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-1000}
DURATION=${DURATION:-60}
INTERVAL_MS=${INTERVAL_MS:-1000}
cargo build --release -q -p jex-sim
BIN=${CARGO_TARGET_DIR:-target}/release/jex-sim
WORK=$(mktemp -d -p /dev/shm jex-sim-bench.XXXXXX)
SIM=
cleanup() {
  if [ -n "$SIM" ]; then kill "$SIM" 2>/dev/null || true; wait "$SIM" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$((20000 + RANDOM % 20000))
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

start=$(date +%s.%N)
"$BIN" run --hosts "$HOSTS" --dir "$WORK/sim" --port "$PORT" --interval-ms "$INTERVAL_MS" \
  --print-relay-config "$WORK/relay.toml" 2>"$WORK/sim.err" &
SIM=$!
# The control socket appears once every host serves.
until [ -S "$WORK/sim/sim.sock" ]; do
  kill -0 "$SIM" 2>/dev/null || { echo "jex-sim exited:" >&2; tail -20 "$WORK/sim.err" >&2; exit 1; }
  sleep 0.1
done
ready=$(date +%s.%N)
hosts_listed=$(grep -c '^\[\[hosts\]\]' "$WORK/relay.toml")

t0=$(cpu_ticks "$SIM")
spool0=$(du -sb "$WORK/sim/hosts" | awk '{print $1}')
sleep "$DURATION"
t1=$(cpu_ticks "$SIM")
spool1=$(du -sb "$WORK/sim/hosts" | awk '{print $1}')
rss=$(status "$SIM" VmRSS)
hwm=$(status "$SIM" VmHWM)
threads=$(status "$SIM" Threads)
fds=$(find "/proc/$SIM/fd" -mindepth 1 -maxdepth 1 | wc -l)

r0=$(date +%s.%N)
"$BIN" ctl --dir "$WORK/sim" restart sim-0001 >/dev/null
r1=$(date +%s.%N)

s0=$(date +%s.%N)
kill -TERM "$SIM"
wait "$SIM" || true
s1=$(date +%s.%N)
SIM=

awk -v h="$HOSTS" -v listed="$hosts_listed" -v d="$DURATION" -v tck="$TCK" \
  -v st="$start" -v rd="$ready" -v t0="$t0" -v t1="$t1" -v rss="$rss" -v hwm="$hwm" \
  -v th="$threads" -v fds="$fds" -v sp0="$spool0" -v sp1="$spool1" \
  -v r0="$r0" -v r1="$r1" -v s0="$s0" -v s1="$s1" 'BEGIN {
  cpu = (t1 - t0) / tck
  printf "hosts                     %d (relay config lists %d)\n", h, listed
  printf "start, all serving        %.1f s\n", rd - st
  printf "CPU time in %d s          %.2f s (%.1f %% of one core)\n", d, cpu, 100 * cpu / d
  printf "RSS now / peak            %.1f / %.1f MiB (%.0f KiB per host)\n", rss / 1024, hwm / 1024, rss / h
  printf "threads                   %d (%.2f per host)\n", th, th / h
  printf "open files                %d (%.1f per host)\n", fds, fds / h
  printf "spool bytes in %d s       %.0f (%.0f per host per sample)\n", d, sp1 - sp0, (sp1 - sp0) / h / d
  printf "ctl restart sim-0001      %.0f ms\n", 1000 * (r1 - r0)
  printf "SIGTERM to exit           %.1f s\n", s1 - s0
}'
