#!/usr/bin/env bash
# Counts user-space instructions per proxied request with valgrind's callgrind, for
# nginx and minigateway, as a noise-free figure to compare changes with.
#
#   scripts/callgrind.sh                both proxies
#   scripts/callgrind.sh minigateway    one of them
#   KEEP=/tmp/cg scripts/callgrind.sh   also copy the callgrind files there, for
#                                       callgrind_annotate
#
# Each proxy runs under callgrind twice, serving 2,000 and then 8,000 plain-HTTP
# keep-alive requests (h2load --h1, 10 connections) to an nginx upstream; the
# difference of the two totals divided by 6,000 removes start-up and shutdown.
# minigateway runs with one worker thread, nginx with one worker process. Everything
# binds to 127.0.0.1 and every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

PROXIES=${*:-nginx minigateway}
SMALL=2000
LARGE=8000

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --quiet --release --bin minigateway

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

UPSTREAM=127.0.0.1:19101
PROXY=127.0.0.1:19180
mkdir -p "$work/upstream" "$work/nginx" "$work/gateway/configs" "$work/gateway/logs"
cat >"$work/upstream/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $work/upstream/nginx.pid;
error_log $work/upstream/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000000;
  server { listen $UPSTREAM; location / { return 200 "pong"; } }
}
EOF
nginx -p "$work/upstream" -c "$work/upstream/nginx.conf" 2>/dev/null &
pids+=($!)

cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000000;
  upstream backend { server $UPSTREAM; keepalive 64; }
  server {
    listen $PROXY;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
    }
  }
}
EOF
cat >"$work/gateway/configs/gateway.toml" <<EOF
[core]
httpListen = ["$PROXY"]
limitMaxConn = 0

[admin]
enable = false

[log]
logLevel = "warn"

[proxyInfo.bench]
host = "default"
target = ["http://$UPSTREAM"]
EOF

wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "callgrind: nothing listens on $1" >&2
  exit 1
}

# Prints the total instructions of one run serving $2 requests through proxy $1.
count() {
  local out=$work/callgrind.$1.$2
  case $1 in
    nginx) valgrind --tool=callgrind --callgrind-out-file="$out" \
      nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>/dev/null & ;;
    minigateway) valgrind --tool=callgrind --callgrind-out-file="$out" \
      target/release/minigateway -w 1 -c "$work/gateway/configs/gateway.toml" 2>/dev/null & ;;
  esac
  local pid=$!
  pids+=("$pid")
  wait_port "$PROXY"
  h2load --h1 -n "$2" -c 10 "http://$PROXY/" >"$work/h2load.txt" 2>&1
  if ! grep -q "$2 succeeded" "$work/h2load.txt"; then
    echo "callgrind: not every request succeeded through $1" >&2
    grep '^requests:' "$work/h2load.txt" >&2
  fi
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out"* "$KEEP"/; fi
  awk '/^summary:/ { print $2 }' "$out"*
}

printf '%-12s %16s %16s %16s\n' proxy "instr ($SMALL)" "instr ($LARGE)" "instr/request"
for proxy in $PROXIES; do
  small=$(count "$proxy" "$SMALL" | awk '{ s += $1 } END { print s }')
  large=$(count "$proxy" "$LARGE" | awk '{ s += $1 } END { print s }')
  printf '%-12s %16s %16s %16.0f\n' "$proxy" "$small" "$large" "$(awk -v a="$small" -v b="$large" -v n=$((LARGE - SMALL)) 'BEGIN { print (b - a) / n }')"
done
