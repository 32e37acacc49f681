#!/usr/bin/env bash
# Measures what the guards cost: throughput through the gateway with every guard on
# (limits high enough that nothing is rejected) against every guard off.
#
#   scripts/bench-guards.sh                 3 rounds of 10 s per setting
#   ROUNDS=5 DURATION=20s scripts/bench-guards.sh
#
# Installs wrk with apt-get when it is missing, builds the release binaries, starts one
# demo upstream on 127.0.0.1:18081, and runs the gateway on 127.0.0.1:18080 with each
# setting in turn, alternating so drifting machine load affects both alike. With
# taskset present, the gateway runs on CPU 0 with one worker thread and wrk and the
# upstream on CPU 1. Everything started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
duration=${DURATION:-10s}
connections=${CONNECTIONS:-50}
gateway_port=18080
upstream_port=18081

for port in $gateway_port $upstream_port; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "bench: port $port on 127.0.0.1 is already in use; stop what runs there first" >&2
    exit 1
  fi
done

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk"
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

echo "bench: building release binaries (fat LTO; this takes a few minutes)"
cargo build --release --quiet --bin minigateway --example demo_upstream
bin=target/release

pin_gateway=()
pin_load=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  pin_gateway=(taskset -c 0)
  pin_load=(taskset -c 1)
fi

tree=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tree"
}
trap cleanup EXIT INT TERM

mkdir -p "$tree/configs" "$tree/logs" "$tree/cert"
common="[log]
logLevel = \"warn\"

[admin]
enable = false

[proxyInfo.app]
host = \"app.test\"
target = [\"http://127.0.0.1:$upstream_port\"]
"

cat >"$tree/configs/on.toml" <<EOF
[core]
httpListen = ["127.0.0.1:$gateway_port"]
limitMaxConn = 10000
ipForwardeds = ["X-Forwarded-For"]
trustedProxies = ["127.0.0.2/32"]

[ccDefense]
enable = true
timeDuration = 1000
count = 1000000
blackTime = 60
whiteList = ["192.0.2.0/24", "2001:db8::/32"]
blackList = ["198.51.100.0/24", "203.0.113.9"]

[limitReq]
enable = true
timeDuration = 1000
count = 1000000
mode = 1

$common
EOF

cat >"$tree/configs/off.toml" <<EOF
[core]
httpListen = ["127.0.0.1:$gateway_port"]
limitMaxConn = 0

[ccDefense]
enable = false

[limitReq]
enable = false

$common
EOF

wait_for_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: nothing listens on 127.0.0.1:$1 after 10 s" >&2
  return 1
}

"${pin_load[@]}" "$bin/examples/demo_upstream" "127.0.0.1:$upstream_port" upstream >/dev/null & pids+=($!)
wait_for_port $upstream_port

# Runs one setting for one round and stores its requests per second in $rate.
rate=
run() {
  local setting=$1
  "${pin_gateway[@]}" "$bin/minigateway" -w 1 -c "$tree/configs/$setting.toml" 2>"$tree/logs/$setting.err" &
  local gateway_pid=$!
  pids+=("$gateway_pid")
  wait_for_port $gateway_port

  "${pin_load[@]}" wrk -t1 -c"$connections" -d2s -H 'Host: app.test' "http://127.0.0.1:$gateway_port/" >/dev/null
  local output
  output=$("${pin_load[@]}" wrk -t1 -c"$connections" -d"$duration" -H 'Host: app.test' \
    "http://127.0.0.1:$gateway_port/api/items?page=2")
  if grep -q "Non-2xx" <<<"$output"; then
    echo "bench: with guards $setting, the gateway returned non-2xx responses:" >&2
    echo "$output" >&2
    exit 1
  fi

  kill "$gateway_pid"
  wait "$gateway_pid" 2>/dev/null || true
  rate=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$output")
}

on=()
off=()
for round in $(seq 1 "$rounds"); do
  # Odd rounds run on first, even rounds off first, so neither always runs second.
  if [ $((round % 2)) -eq 1 ]; then
    run on
    on+=("$rate")
    run off
    off+=("$rate")
  else
    run off
    off+=("$rate")
    run on
    on+=("$rate")
  fi
  echo "bench: round $round: guards on ${on[-1]} req/s, guards off ${off[-1]} req/s"
done

echo
printf '%-6s %14s %14s\n' round "on (req/s)" "off (req/s)"
for i in "${!on[@]}"; do
  printf '%-6s %14s %14s\n' "$((i + 1))" "${on[$i]}" "${off[$i]}"
done
mean() { printf '%s\n' "$@" | awk '{ sum += $1 } END { printf "%.0f", sum / NR }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "%.0f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mean_on=$(mean "${on[@]}")
mean_off=$(mean "${off[@]}")
median_on=$(median "${on[@]}")
median_off=$(median "${off[@]}")
printf '%-6s %14s %14s\n' mean "$mean_on" "$mean_off"
printf '%-6s %14s %14s\n' median "$median_on" "$median_off"
awk -v on="$mean_on" -v off="$mean_off" -v mon="$median_on" -v moff="$median_off" 'BEGIN {
  printf "on/off throughput ratio: %.3f of means, %.3f of medians (below 1 means the guards cost throughput)\n", on / off, mon / moff
}'
