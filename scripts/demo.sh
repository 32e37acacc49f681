#!/usr/bin/env bash
# Runs minigateway on configs/gateway.toml in front of two demo upstreams, sends a few
# requests to show round robin and one over HTTPS, then stops everything it started.
# On the first run it makes a development certificate with scripts/dev-cert.sh.
#
#   scripts/demo.sh          run the demo and stop
#   scripts/demo.sh --serve  keep everything running until Ctrl-C
#
# Ports used: 8080 and 8443 (gateway HTTP and HTTPS), 8081 and 8082 (upstreams), 9900
# (admin API), all on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

serve=false
[ "${1:-}" = "--serve" ] && serve=true

for port in 8080 8443 8081 8082 9900; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port on 127.0.0.1 is already in use; stop what runs there first" >&2
    exit 1
  fi
done

scripts/dev-cert.sh

echo "demo: building minigateway and the demo upstream"
cargo build --quiet --bin minigateway --example demo_upstream
bin=target/debug

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

"$bin/examples/demo_upstream" 127.0.0.1:8081 upstream-a & pids+=($!)
"$bin/examples/demo_upstream" 127.0.0.1:8082 upstream-b & pids+=($!)
"$bin/minigateway" -c configs/gateway.toml & pids+=($!)

# Wait up to 10 s for the gateway to accept connections.
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break
  sleep 0.1
done

request() {
  # A minimal HTTP/1.1 client over bash's /dev/tcp, so the demo needs no curl.
  exec 3<>/dev/tcp/127.0.0.1/"$1"
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$2" "$3" >&3
  tail -n 1 <&3
  exec 3<&-
}

echo "demo: six requests through the gateway (round robin over two upstreams):"
for i in 1 2 3 4 5 6; do
  printf '  %s\n' "$(request 8080 "/hello/$i" demo.test)"
done

https_request() {
  # openssl checks the certificate against the development CA and the name demo.test.
  printf 'GET %s HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n' "$1" |
    openssl s_client -quiet -connect 127.0.0.1:8443 -servername demo.test \
      -CAfile cert/dev-ca.pem -verify_return_error -verify_hostname demo.test 2>/dev/null |
    tail -n 1
}

echo "demo: one request over HTTPS (certificate verified against cert/dev-ca.pem):"
response=$(https_request /hello/tls)
if [ -z "$response" ]; then
  echo "demo: the HTTPS request failed; check the gateway's log above" >&2
  exit 1
fi
printf '  %s\n' "$response"
echo "demo: admin API, requests in flight: $(request 9900 /api_status/reqcount 127.0.0.1)"

if $serve; then
  echo "demo: serving on http://127.0.0.1:8080 and https://127.0.0.1:8443 (admin on 127.0.0.1:9900); press Ctrl-C to stop"
  wait "${pids[2]}"
else
  echo "demo: done; stopping the gateway and the upstreams"
fi
