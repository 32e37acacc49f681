#!/usr/bin/env bash
# Keeps a bounded load on the gateway while its configuration is rewritten 50 times
# (alternating target sets, every fifth rewrite invalid) with SIGHUP in between, then
# prints requests sent and failed, and reloads applied and rejected.
#
#   scripts/soak-reload.sh             release build, 30 s of load
#   SOAK_SECONDS=10 PROFILE=debug scripts/soak-reload.sh
#   SOAK_KEEP=1 keeps the temporary tree (config, console log, wrk output) for reading
#
# Uses 127.0.0.1 ports 18080 (gateway), 18081 and 18082 (upstreams), 19900 (admin).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${SOAK_SECONDS:-30}
profile=${PROFILE:-release}
rewrites=50

if ! command -v wrk >/dev/null 2>&1; then
  echo "soak: installing wrk"
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
for port in 18080 18081 18082 19900; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "soak: port $port on 127.0.0.1 is already in use" >&2
    exit 1
  fi
done

if [ "$profile" = release ]; then
  cargo build --quiet --release --bin minigateway --example demo_upstream
else
  cargo build --quiet --bin minigateway --example demo_upstream
fi
bin=target/$profile

tree=$(mktemp -d)
mkdir -p "$tree/configs" "$tree/logs"
config="$tree/configs/gateway.toml"

write_config() {
  # $1: target list; $2: an extra line for [core] (an invalid key makes the file invalid).
  cat >"$config.tmp" <<EOF
[core]
httpListen = ["127.0.0.1:18080"]
$2

[admin]
listen = "127.0.0.1:19900"

[proxyInfo.soak]
host = "default"
target = [$1]
obtainMode = 2
EOF
  mv "$config.tmp" "$config"
}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${SOAK_KEEP:-}" ] || rm -rf "$tree"
}
trap cleanup EXIT INT TERM

"$bin/examples/demo_upstream" 127.0.0.1:18081 upstream-a >/dev/null & pids+=($!)
"$bin/examples/demo_upstream" 127.0.0.1:18082 upstream-b >/dev/null & pids+=($!)
write_config '"http://127.0.0.1:18081"' ""
"$bin/minigateway" -c "$config" 2>"$tree/logs/console.log" & gateway=$!
pids+=("$gateway")
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null && break
  sleep 0.1
done

echo "soak: ${seconds}s of load (wrk, 2 threads, 32 connections) with $rewrites rewrites"
wrk -t2 -c32 -d"${seconds}s" -H 'Host: soak.test' http://127.0.0.1:18080/ >"$tree/wrk.txt" &
load=$!

interval=$(awk "BEGIN { printf \"%.3f\", ($seconds - 4) / $rewrites }")
invalid=0
for i in $(seq 1 "$rewrites"); do
  if [ $((i % 5)) -eq 0 ]; then
    write_config '"http://127.0.0.1:18081"' "readTimout = 5"
    invalid=$((invalid + 1))
  elif [ $((i % 3)) -eq 0 ]; then
    write_config '"http://127.0.0.1:18081", "http://127.0.0.1:18082"' ""
  elif [ $((i % 2)) -eq 0 ]; then
    write_config '"http://127.0.0.1:18082"' ""
  else
    write_config '"http://127.0.0.1:18081"' ""
  fi
  sleep "$interval"
  kill -HUP "$gateway"
done
wait "$load"

status=$(exec 3<>/dev/tcp/127.0.0.1/19900 && printf 'GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 && cat <&3)
applied=$(grep -o '"applied_total":[0-9]*' <<<"$status" | cut -d: -f2)
rejected=$(grep -o '"failed_total":[0-9]*' <<<"$status" | cut -d: -f2)
generation=$(grep -o '"generation":[0-9]*' <<<"$status" | head -n 1 | cut -d: -f2)

sent=$(grep -o '[0-9]* requests in' "$tree/wrk.txt" | cut -d' ' -f1)
non2xx=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' "$tree/wrk.txt" | grep -o '[0-9]*$' || true)
socket=$(grep -o 'Socket errors: .*' "$tree/wrk.txt" || true)
socket_total=$(grep -o '[0-9]\+' <<<"$socket" | paste -sd+ - | bc 2>/dev/null || echo 0)

echo
echo "requests sent:      $sent"
echo "requests failed:    $(( ${non2xx:-0} + ${socket_total:-0} )) (non-2xx: ${non2xx:-0}; ${socket:-socket errors: none})"
echo "rewrites:           $rewrites ($invalid invalid), each followed by SIGHUP"
echo "reloads applied:    $applied (generation $generation)"
echo "reloads rejected:   $rejected"
