#!/usr/bin/env bash
# Memory per connection: whether a running agent keeps anything for the connections it has
# served. Fails when it does.
#
# Starts a real agent (development PKI, loopback, telemetry at 1 Hz, logging at INFO as
# shipped), then serves WARMUP and then CONNECTIONS mutual-TLS connections, each a new
# `jex-agent ctl host` process (PARALLEL at a time): a TCP connection from a new source port, a
# handshake with the controller's certificate, one GetHost call (so one `rpc` span carrying the
# peer and its address), closed. It reads the agent's resident set size with `ps -o rss=` (KiB)
# after the warm-up and at the end, and fails when it grew by more than MAX_GROWTH_KIB, when a
# call failed, or when the agent died.
#
# What it proves: with the defaults, 10,000 connections may add at most 1 MiB, about 100 bytes
# each, once the warm-up has let the allocator reach its working size (the telemetry hub's live
# buffer, at most 256 records of a few hundred bytes, may still be filling: well inside the
# bound). Anything kept per connection or per peer address exceeds it: for example the
# unified-log layer on macOS (tracing-oslog 0.3) keeps the full text of every span it is told of,
# for the life of the process; told the `rpc` span's fields, that is a few hundred bytes for each
# address seen, some 3 MiB over 10,000 connections from random source ports. The agent tells it
# span names only (logsink::SpanNamesOnly), and this check would catch a regression. What it
# does not prove:
# behaviour under many connections at once (tests/tests/edge.rs floods the agent), memory held
# by long streams, or anything about a remote controller.
#
#   bash benches/connections.sh          # builds jex-agent with `dev` (for `pki dev`) and runs it
#   CONNECTIONS=2000 WARMUP=200 bash benches/connections.sh
#   BIN=target/release/jex-agent PKI_BIN=target/debug/jex-agent bash benches/connections.sh
#
# BIN is the agent measured (and the `ctl` client); PKI_BIN a jex-agent built with the `dev`
# feature, for `pki dev` (default: BIN). Works on macOS and Linux; needs no root.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-10000}
WARMUP=${WARMUP:-1000}
PARALLEL=${PARALLEL:-4}
MAX_GROWTH_KIB=${MAX_GROWTH_KIB:-1024}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p jex-agent --features dev
  BIN=${CARGO_TARGET_DIR:-target}/release/jex-agent
fi
PKI_BIN=${PKI_BIN:-$BIN}
WORK=$(mktemp -d)
AGENT=
cleanup() {
  if [ -n "$AGENT" ]; then
    kill "$AGENT" 2>/dev/null || true
    wait "$AGENT" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$PKI_BIN" pki dev --out "$WORK/pki" >/dev/null
PORT=$((20000 + RANDOM % 20000))
cat >"$WORK/agent.toml" <<TOML
state_dir = "$WORK/state"
[server]
listen = "127.0.0.1:$PORT"
status_socket = "$WORK/agent.sock"
[tls]
cert = "$WORK/pki/agent.pem"
key = "$WORK/pki/agent.key"
client_ca = "$WORK/pki/ca.pem"
[roles]
controller = ["spiffe://fleet.example/controller"]
[telemetry]
interval_ms = 1000
[logging]
dir = "$WORK/logs"
level = "info"
TOML
# At the shipped level, whatever AGENT_LOG says: the `rpc` span is an INFO span, and a lower
# level would keep it from every layer, the unified log's included.
env -u AGENT_LOG "$BIN" run --config "$WORK/agent.toml" 2>"$WORK/agent.err" &
AGENT=$!

ctl_host() {
  "$BIN" ctl --agent "https://127.0.0.1:$PORT" --ca "$WORK/pki/ca.pem" \
    --cert "$WORK/pki/controller.pem" --key "$WORK/pki/controller.key" --server-name localhost host
}
# Each call is its own process, so its own connection; xargs fails (123) when any call does.
connections() {
  export -f ctl_host
  export BIN PORT WORK
  seq "$1" | xargs -n 1 -P "$PARALLEL" bash -c 'ctl_host >/dev/null' _
}
rss_kib() { ps -o rss= -p "$AGENT" | tr -d ' '; }

for _ in $(seq 50); do
  ctl_host >/dev/null 2>&1 && break
  kill -0 "$AGENT" 2>/dev/null || { cat "$WORK/agent.err" >&2; echo "the agent exited" >&2; exit 1; }
  sleep 0.2
done
ctl_host >/dev/null

start=$SECONDS
connections "$WARMUP"
before=$(rss_kib)
connections "$CONNECTIONS"
after=$(rss_kib)
kill -0 "$AGENT" 2>/dev/null || { echo "the agent died during the run" >&2; exit 1; }
growth=$((after - before))
echo "connections: $WARMUP warm-up + $CONNECTIONS measured, $PARALLEL at a time, in $((SECONDS - start)) s"
echo "agent RSS: $before KiB after the warm-up, $after KiB after $CONNECTIONS more connections: $growth KiB ($((growth * 1024 / CONNECTIONS)) bytes per connection); bound $MAX_GROWTH_KIB KiB"
if [ "$growth" -gt "$MAX_GROWTH_KIB" ]; then
  echo "FAIL: the agent's memory grew by $growth KiB over $CONNECTIONS connections (bound $MAX_GROWTH_KIB KiB): something is kept per connection" >&2
  exit 1
fi
