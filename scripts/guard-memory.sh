#!/usr/bin/env bash
# Measures the memory that guard state takes, two ways:
# 1. through real sockets: a release gateway with CC defence and limitReq enabled gets
#    one request from each of CLIENTS (default 20000) loopback source addresses, and its
#    resident memory is read from /proc before and after;
# 2. directly: examples/guard_memory feeds ADDRESSES (default 1000000) addresses to the
#    guard state, once with the default maxEntries (100000) and once with maxEntries
#    equal to the address count, so nothing is evicted.
#
# Uses 127.0.0.1:18090 (gateway) and 127.0.0.1:18091 (upstream); everything started
# here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=${CLIENTS:-20000}
addresses=${ADDRESSES:-1000000}
gateway_port=18090
upstream_port=18091

for port in $gateway_port $upstream_port; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "guard-memory: port $port on 127.0.0.1 is already in use; stop what runs there first" >&2
    exit 1
  fi
done

echo "guard-memory: building release binaries (fat LTO; this takes a few minutes)"
cargo build --release --quiet --bin minigateway --example demo_upstream --example guard_memory --example many_clients
bin=target/release

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
cat >"$tree/configs/gateway.toml" <<EOF
[core]
httpListen = ["127.0.0.1:$gateway_port"]

[ccDefense]
enable = true
timeDuration = 60000
count = 100
blackTime = 60

[limitReq]
enable = true
timeDuration = 60000
count = 100

[log]
logLevel = "warn"

[admin]
enable = false

[proxyInfo.app]
host = "app.test"
target = ["http://127.0.0.1:$upstream_port"]
EOF

wait_for_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "guard-memory: nothing listens on 127.0.0.1:$1 after 10 s" >&2
  return 1
}

resident_kib() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

"$bin/examples/demo_upstream" "127.0.0.1:$upstream_port" upstream >/dev/null & pids+=($!)
"$bin/minigateway" -c "$tree/configs/gateway.toml" & gateway_pid=$!
pids+=("$gateway_pid")
wait_for_port $upstream_port
wait_for_port $gateway_port

"$bin/examples/many_clients" "127.0.0.1:$gateway_port" 1000 app.test 127.3.0.1 >/dev/null
before=$(resident_kib "$gateway_pid")
echo "guard-memory: $clients distinct client addresses through real sockets"
"$bin/examples/many_clients" "127.0.0.1:$gateway_port" "$clients" app.test 127.2.0.1 | sed 's/^/  status /'
after=$(resident_kib "$gateway_pid")
echo "  gateway resident memory: $before KiB after 1000 warm-up clients, $after KiB after $clients more"
echo "  growth: $((after - before)) KiB"

echo
echo "guard-memory: $addresses addresses fed to the guard state directly, maxEntries 100000"
"$bin/examples/guard_memory" "$addresses" 100000 | sed 's/^/  /'
echo
echo "guard-memory: $addresses addresses fed to the guard state directly, maxEntries $addresses"
"$bin/examples/guard_memory" "$addresses" "$addresses" | sed 's/^/  /'
