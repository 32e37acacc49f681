#!/usr/bin/env bash
# Benchmarks minigateway side by side with nginx as a reverse proxy, in one run.
#
#   scripts/bench.sh                      every case, 3 rounds of 10 s
#   ROUNDS=5 DURATION=15 scripts/bench.sh http 64k
#   scripts/bench.sh list                 the case names
#
# Method: the proxy under test runs alone on core 1 (nginx with one worker and access
# log off, or minigateway with one worker thread); the upstream (nginx, one worker,
# fixed bodies, keep-alive) and the load generator share core 0. Each case alternates
# nginx and minigateway for ROUNDS rounds and prints the median and range of
# requests/s, p50 and p99 latency, and the proxy's CPU time per request
# (utime + stime from /proc/PID/stat divided by requests). Everything binds to
# 127.0.0.1; every process this script starts is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
ALL_CASES="http 64k rate https handshake h2 idle guards accesslog"
if [ "${1:-}" = list ]; then
  echo "$ALL_CASES"
  exit 0
fi
CASES=${*:-$ALL_CASES}

if [ "$(nproc)" -lt 2 ]; then
  echo "bench: needs at least 2 cores to pin the proxy apart from the load" >&2
  exit 1
fi
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "bench: building minigateway (release)"
cargo build --quiet --release --bin minigateway --example idle_clients --example rate_load
gateway_bin=$PWD/target/release/minigateway
idle_bin=$PWD/target/release/examples/idle_clients
rate_bin=$PWD/target/release/examples/rate_load

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

UPSTREAM=127.0.0.1:19001
NGINX_HTTP=127.0.0.1:19080
NGINX_HTTPS=127.0.0.1:19443
GATEWAY_HTTP=127.0.0.1:19081
GATEWAY_HTTPS=127.0.0.1:19444

# --- the upstream: nginx serving fixed bodies on core 0 ---
mkdir -p "$work/www" "$work/upstream" "$work/nginx" "$work/gateway/configs" "$work/gateway/cert" "$work/gateway/logs"
printf 'pong' >"$work/www/index.txt"
head -c 65536 /dev/zero | tr '\0' 'x' >"$work/www/64k.txt"
cat >"$work/upstream/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $work/upstream/nginx.pid;
error_log $work/upstream/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  server {
    listen $UPSTREAM backlog=4096;
    root $work/www;
    location = / { try_files /index.txt =404; }
    location = /64k { try_files /64k.txt =404; }
  }
}
EOF
taskset -c 0 nginx -p "$work/upstream" -c "$work/upstream/nginx.conf" 2>/dev/null &
pids+=($!)

# --- a certificate for the HTTPS cases ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -keyout "$work/gateway/cert/bench.key" -out "$work/gateway/cert/bench.crt" 2>/dev/null

# --- nginx as the proxy under test ---
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
worker_rlimit_nofile 65536;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  upstream backend {
    server $UPSTREAM;
    keepalive 64;
  }
  server {
    listen $NGINX_HTTP backlog=4096;
    listen $NGINX_HTTPS ssl http2 backlog=4096;
    ssl_certificate $work/gateway/cert/bench.crt;
    ssl_certificate_key $work/gateway/cert/bench.key;
    ssl_session_tickets off;
    ssl_session_cache off;
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

gateway_config() {
  # $1: extra [core] lines; $2: extra sections.
  cat >"$work/gateway/configs/gateway.toml" <<EOF
[core]
httpListen = ["$GATEWAY_HTTP"]
limitMaxConn = 0
readTimeout = 60
writeTimeout = 60
idleTimeout = 75
$1

[admin]
enable = false

[log]
logLevel = "warn"

[proxyInfo.bench]
host = "default"
target = ["http://$UPSTREAM"]

$2
EOF
}

supports_https() {
  gateway_config "httpsListen = [\"$GATEWAY_HTTPS\"]" "[sslCert.bench]
ssl_certificate = \"bench.crt\"
ssl_certificate_key = \"bench.key\""
  "$gateway_bin" -t -c "$work/gateway/configs/gateway.toml" >/dev/null 2>&1
}

start_proxy() {
  # $1: nginx or minigateway. Sets proxy_pid.
  case $1 in
    nginx) taskset -c 1 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>/dev/null & ;;
    minigateway) taskset -c 1 "$gateway_bin" -w 1 -c "$work/gateway/configs/gateway.toml" 2>>"$work/gateway/logs/console.log" & ;;
  esac
  proxy_pid=$!
  pids+=("$proxy_pid")
  local addr=$2
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench: $1 did not start listening on $addr" >&2
  [ "$1" = minigateway ] && tail -n 5 "$work/gateway/logs/console.log" >&2
  exit 1
}

stop_proxy() {
  kill "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
}

cpu_ticks() {
  # utime + stime of a process, in clock ticks.
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}

to_ms() {
  # wrk latency such as 512.00us, 1.20ms or 1.01s, in milliseconds.
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "%s", v }'
}

RESULTS=$work/results.txt
: >"$RESULTS"
TICK=$(getconf CLK_TCK)

record() {
  # case proxy rps p50_ms p99_ms cpu_us_per_request
  echo "$*" >>"$RESULTS"
}

run_wrk() {
  # $1: case, $2: proxy, $3: URL, then extra wrk arguments. Load on core 0.
  local out=$work/wrk.txt
  taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d2s -H 'Host: bench.test' "$3" >/dev/null 2>&1 || true
  local before after
  before=$(cpu_ticks "$proxy_pid")
  taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H 'Host: bench.test' "${@:4}" "$3" >"$out" 2>&1
  after=$(cpu_ticks "$proxy_pid")
  local requests rps p50 p99 errors
  requests=$(awk '/requests in/ { print $1 }' "$out")
  rps=$(awk '/Requests\/sec/ { print $2 }' "$out")
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  errors=$(awk '/Non-2xx|Socket errors/ { print }' "$out" | tr '\n' ' ')
  [ -n "$errors" ] && echo "bench: $1 $2: $errors" >&2
  record "$1" "$2" "$rps" "$p50" "$p99" "$(awk -v t=$((after - before)) -v r="$requests" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz * 1e6 / r }')"
}

run_rate() {
  # $1: case, $2: proxy, $3: address. 10,000 requests/s from the CONNECTIONS
  # connections, to compare CPU per request at the same offered load.
  local out=$work/rate.txt
  local before after
  before=$(cpu_ticks "$proxy_pid")
  taskset -c 0 "$rate_bin" "$3" bench.test 10000 "$DURATION" "$CONNECTIONS" >"$out" 2>&1 || true
  after=$(cpu_ticks "$proxy_pid")
  local requests errors p50 p99 elapsed
  read -r _ requests _ errors _ p50 _ p99 _ elapsed <"$out"
  [ "${errors:-0}" != 0 ] && echo "bench: $1 $2: $errors errors" >&2
  record "$1" "$2" "$(awk -v r="$requests" -v s="$elapsed" 'BEGIN { printf "%.0f", r / s }')" "$p50" "$p99" \
    "$(awk -v t=$((after - before)) -v r="${requests:-1}" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz * 1e6 / (r > 0 ? r : 1) }')"
}

run_h2load() {
  # $1: case, $2: proxy, $3: URL, $4: extra h2load args. Reports CPU per request.
  local out=$work/h2load.txt
  local before after
  before=$(cpu_ticks "$proxy_pid")
  taskset -c 0 h2load -c"$CONNECTIONS" -D "$DURATION" $4 "$3" >"$out" 2>&1 || true
  after=$(cpu_ticks "$proxy_pid")
  local requests rps mean
  requests=$(awk '/^requests:/ { print $8 }' "$out")
  rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out")
  mean=$(awk '/^time for request:/ { print $6 }' "$out")
  record "$1" "$2" "$rps" "$(to_ms "$mean")" "-" "$(awk -v t=$((after - before)) -v r="${requests:-1}" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz * 1e6 / (r > 0 ? r : 1) }')"
}

idle_memory() {
  # $1: proxy, $2: address. Records resident kB per idle keep-alive connection.
  local before after
  before=$(awk '/VmRSS/ { print $2 }' "/proc/$proxy_pid/status")
  taskset -c 0 "$idle_bin" "$2" bench.test "$IDLE_CONNECTIONS" 6 >"$work/idle.txt" &
  local client=$!
  for _ in $(seq 1 200); do
    grep -q ready "$work/idle.txt" 2>/dev/null && break
    sleep 0.1
  done
  sleep 1
  after=$(awk '/VmRSS/ { print $2 }' "/proc/$proxy_pid/status")
  local opened
  opened=$(awk '/ready/ { print $2 }' "$work/idle.txt")
  wait "$client" || true
  record idle "$1" "${opened:-0}" - - "$(awk -v a="$after" -v b="$before" -v n="${opened:-1}" 'BEGIN { printf "%.2f", (a - b) / n }')"
}

have_https=false
supports_https && have_https=true

for case_name in $CASES; do
  for round in $(seq 1 "$ROUNDS"); do
    for proxy in nginx minigateway; do
      case $case_name in
        http|64k|rate|idle) gateway_config "" "" ;;
        https|handshake|h2)
          $have_https || continue
          gateway_config "httpsListen = [\"$GATEWAY_HTTPS\"]" "[sslCert.bench]
ssl_certificate = \"bench.crt\"
ssl_certificate_key = \"bench.key\"" ;;
        guards)
          [ "$proxy" = nginx ] && continue
          # Counts high enough that the load (one client address) is never rejected.
          gateway_config "" "[ccDefense]
enable = true
timeDuration = 1000
count = 1000000
blackTime = 1
[limitReq]
enable = true
timeDuration = 1000
count = 1000000
mode = 1"
          sed -i "s|logLevel = \"warn\"|logLevel = \"warn\"\naccessLog = true|" "$work/gateway/configs/gateway.toml" ;;
        accesslog)
          [ "$proxy" = nginx ] && continue
          gateway_config "" "" ;;
      esac

      http_addr=$NGINX_HTTP
      https_addr=$NGINX_HTTPS
      if [ "$proxy" = minigateway ]; then
        http_addr=$GATEWAY_HTTP
        https_addr=$GATEWAY_HTTPS
      fi
      start_proxy "$proxy" "$http_addr"
      case $case_name in
        http) run_wrk http "$proxy" "http://$http_addr/" ;;
        64k) run_wrk 64k "$proxy" "http://$http_addr/64k" ;;
        rate) run_rate rate "$proxy" "$http_addr" ;;
        https) run_wrk https "$proxy" "https://$https_addr/" ;;
        handshake) run_wrk handshake "$proxy" "https://$https_addr/" -H 'Connection: close' ;;
        h2) run_h2load h2 "$proxy" "https://$https_addr/" "-m 10" ;;
        idle) idle_memory "$proxy" "$http_addr" ;;
        guards) run_wrk "guards+accesslog" "$proxy" "http://$http_addr/" ;;
        accesslog)
          # At saturation and at a fixed 10,000 requests/s (100,000 requests in 10 s).
          run_wrk "accesslog-off" "$proxy" "http://$http_addr/"
          run_rate "accesslog-off-rate" "$proxy" "$http_addr"
          stop_proxy
          gateway_config "" ""
          sed -i "s|logLevel = \"warn\"|logLevel = \"warn\"\naccessLog = true|" "$work/gateway/configs/gateway.toml"
          start_proxy "$proxy" "$http_addr"
          run_wrk "accesslog-on" "$proxy" "http://$http_addr/"
          run_rate "accesslog-on-rate" "$proxy" "$http_addr" ;;
      esac
      stop_proxy
    done
  done
done

echo
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); rounds: $ROUNDS x ${DURATION}s; wrk -t1 -c$CONNECTIONS"
awk '
  function median(list, n,    sorted, i, j, t) {
    for (i = 1; i <= n; i++) sorted[i] = list[i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (sorted[j] + 0 < sorted[i] + 0) { t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t }
    lo = sorted[1]; hi = sorted[n]
    return (n % 2) ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
  }
  {
    key = $1 " " $2
    if (!(key in count)) order[++keys] = key
    n = ++count[key]
    rps[key, n] = $3; p50[key, n] = $4; p99[key, n] = $5; cpu[key, n] = $6
  }
  END {
    printf "%-18s %-12s %22s %16s %16s %20s\n", "case", "proxy", "req/s (range)", "p50 ms", "p99 ms", "cpu us/req (range)"
    for (k = 1; k <= keys; k++) {
      key = order[k]; n = count[key]
      for (i = 1; i <= n; i++) { a[i] = rps[key, i] } ; m = median(a, n); r = sprintf("%.0f (%.0f-%.0f)", m, lo, hi)
      for (i = 1; i <= n; i++) { a[i] = p50[key, i] } ; m50 = (p50[key, 1] == "-") ? "-" : sprintf("%.3f", median(a, n))
      for (i = 1; i <= n; i++) { a[i] = p99[key, i] } ; m99 = (p99[key, 1] == "-") ? "-" : sprintf("%.3f", median(a, n))
      for (i = 1; i <= n; i++) { a[i] = cpu[key, i] } ; mc = median(a, n); c = sprintf("%.2f (%.2f-%.2f)", mc, lo, hi)
      split(key, parts, " ")
      printf "%-18s %-12s %22s %16s %16s %20s\n", parts[1], parts[2], r, m50, m99, c
    }
  }' "$RESULTS"
echo "(idle: the req/s column is the number of idle connections held, and the last column is resident kB per connection)"
$have_https || echo "(https, handshake and h2 were skipped: this build does not serve HTTPS)"
