#!/usr/bin/env bash
# How well each proxy reuses its upstream connections: new connections the backend accepted
# per 100 000 proxied requests, for the gateway (threads = 2), nginx (2 workers, upstream
# keepalive 64 per worker) and HAProxy (nbthread 2, http-reuse always), at 64 and 256 client
# connections, each after a warm-up. The count comes from the backend nginx's stub_status
# `accepts` counter read before and after a wrk run; wrk has no request-count flag, so it runs
# for DURATION and the count is normalised by wrk's own request total.
#
#   benches/upstream_reuse.sh
#
# Environment:
#   DURATION=10s          measured wrk run per proxy and client-connection count
#   WARMUP=2s             wrk warm-up at the same connection count before each measured run
#   CONNS="64 256"        client connection counts
#   WRK_THREADS=2         wrk threads
#   GATEWAY_BIN=...       gateway binary (default target/release/gateway, built if missing)
#   GATEWAY_SERVER_CONF   TOML lines put inside the gateway's [server] table
#                         (e.g. 'upstream_keepalive_pool_size = 256')
#   EXTRA_GATEWAY_CONF    TOML appended at the end of the gateway config (bare keys land in
#                         the [[upstream]] table)
#   PROXIES="gateway nginx haproxy"   which to measure
#   KEEP=1                keep the temp dir (configs, logs, raw wrk output) and print its path
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in
  -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
read -r -a CONNS <<<"${CONNS:-64 256}"
WRK_THREADS="${WRK_THREADS:-2}"
GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/release/gateway}"
read -r -a PROXIES <<<"${PROXIES:-gateway nginx haproxy}"
for p in "${PROXIES[@]}"; do
  case "$p" in gateway|nginx|haproxy) ;; *) echo "error: unknown proxy '$p' in PROXIES (gateway nginx haproxy)" >&2; exit 2 ;; esac
done
want() { local x; for x in "${PROXIES[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

# ---------------------------------------------------------------- tools
find_tool() {
  command -v "$1" 2>/dev/null || { for d in /usr/sbin /sbin /usr/local/sbin; do
    [ -x "$d/$1" ] && { echo "$d/$1"; return 0; }; done; return 1; }
}
missing=()
NGINX="$(find_tool nginx)" || missing+=("nginx (Debian package nginx)")
HAPROXY="$(find_tool haproxy)" || missing+=("haproxy (Debian package haproxy)")
WRK="$(find_tool wrk)" || missing+=("wrk (Debian package wrk)")
CURL="$(find_tool curl)" || missing+=("curl (Debian package curl)")
PYTHON="$(find_tool python3)" || missing+=("python3 (Debian package python3)")
if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do echo "error: missing tool: $m" >&2; done
  echo "hint: run .ci/setup (as root) to install what the benches need" >&2
  exit 1
fi
if ! "$NGINX" -V 2>&1 | grep -q -- --with-http_stub_status_module; then
  echo "error: this nginx lacks the stub_status module the count is read from (Debian's nginx has it)" >&2
  exit 1
fi
if want gateway && [ ! -x "$GATEWAY_BIN" ]; then
  if [ "$GATEWAY_BIN" = "$ROOT/target/release/gateway" ]; then
    echo "note: $GATEWAY_BIN is missing; building it: cargo build --release --bin gateway" >&2
    (cd "$ROOT" && cargo build --release --bin gateway) >&2
  else
    echo "error: GATEWAY_BIN=$GATEWAY_BIN is not an executable file" >&2
    exit 1
  fi
fi

secs() {
  local v="$1"
  case "$v" in
    *ms) echo 1 ;;
    *s) echo "${v%s}" ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *h) echo $(( ${v%h} * 3600 )) ;;
    *) echo "$v" ;;
  esac
}
DUR_S="$(secs "$DURATION")"
WARM_S="$(secs "$WARMUP")"

# ---------------------------------------------------------------- temp dir, cleanup
TMP="$(mktemp -d /tmp/switchyard-reuse.XXXXXX)"
chmod 755 "$TMP"
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do
    for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do kill -KILL "$c" 2>/dev/null || true; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept: $TMP" >&2; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_ports() {
  "$PYTHON" - "$1" <<'EOF'
import random, socket, sys
n = int(sys.argv[1]); held = []; out = []
while len(out) < n:
    p = random.randint(20000, 32000)
    if p in out: continue
    s = socket.socket()
    try: s.bind(("127.0.0.1", p))
    except OSError: s.close(); continue
    held.append(s); out.append(p)
print(" ".join(map(str, out)))
EOF
}
read -r P_BACKEND P_STATUS P_GW P_ADMIN P_NGINX P_HAPROXY <<<"$(free_ports 6)"

die_with_log() {
  echo "error: $1" >&2
  [ -f "$2" ] && { echo "--- last lines of $2:" >&2; tail -n 30 "$2" >&2; }
  exit 1
}
wait_http() { # url, pid, log, [status]; up to 30 s
  local url="$1" pid="$2" log="$3" st="${4:-}" code
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || die_with_log "process for $url exited during start-up" "$log"
    code="$("$CURL" -s -o /dev/null -m 1 -w '%{http_code}' "$url" 2>/dev/null || true)"
    if [ -n "$st" ]; then [ "$code" = "$st" ] && return 0
    else [ -n "$code" ] && [ "$code" != 000 ] && return 0; fi
    sleep 0.1
  done
  die_with_log "$url did not answer${st:+ $st} within 30 s" "$log"
}
nginx_common() {
  cat <<EOF
daemon off;
master_process on;
user root root;
pid $1/nginx.pid;
error_log $1/error.log warn;
EOF
}
nginx_http_common() {
  cat <<EOF
  access_log off;
  client_body_temp_path $1/client_body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
EOF
}

# ---------------------------------------------------------------- backend with stub_status
# keepalive_requests is raised so the backend never closes a kept-alive connection itself
# (nginx's default of 1000 would add ~100 new connections per 100 000 requests to every proxy).
B="$TMP/backend"; mkdir -p "$B"
cat >"$B/nginx.conf" <<EOF
$(nginx_common "$B")
worker_processes 1;
events { worker_connections 8192; }
http {
$(nginx_http_common "$B")
  server {
    listen 127.0.0.1:$P_BACKEND backlog=4096;
    location / { return 200 "ok"; }
  }
  server {
    listen 127.0.0.1:$P_STATUS;
    location / { stub_status; }
  }
}
EOF
"$NGINX" -p "$B" -c "$B/nginx.conf" >"$B/stdout.log" 2>&1 &
PIDS+=($!); PID_BACKEND=$!
wait_http "http://127.0.0.1:$P_BACKEND/" "$PID_BACKEND" "$B/error.log" 200
wait_http "http://127.0.0.1:$P_STATUS/" "$PID_BACKEND" "$B/error.log" 200

accepts() { # the backend's accepts counter; this read's own connection is counted in it
  "$CURL" -s -m 5 "http://127.0.0.1:$P_STATUS/" | awk 'NR==3 {print $1}'
}

# ---------------------------------------------------------------- proxies
if want gateway; then
  G="$TMP/gateway"; mkdir -p "$G"
  cat >"$G/gateway.toml" <<EOF
[server]
threads = 2
access_log = "off"
${GATEWAY_SERVER_CONF:-}

[admin]
addr = "127.0.0.1:$P_ADMIN"

[[listener]]
name = "http"
addr = "127.0.0.1:$P_GW"

[[route]]
name = "all"
path_prefix = "/"
upstream = "backend"

[[upstream]]
name = "backend"
algorithm = "round-robin"
backends = [ { addr = "127.0.0.1:$P_BACKEND" } ]
${EXTRA_GATEWAY_CONF:-}
EOF
  "$GATEWAY_BIN" -c "$G/gateway.toml" >"$G/gateway.log" 2>&1 &
  PIDS+=($!); PID_GW=$!
  wait_http "http://127.0.0.1:$P_ADMIN/health/ready" "$PID_GW" "$G/gateway.log" 200
  wait_http "http://127.0.0.1:$P_GW/" "$PID_GW" "$G/gateway.log" 200
fi

if want nginx; then
  N="$TMP/nginx"; mkdir -p "$N"
  cat >"$N/nginx.conf" <<EOF
$(nginx_common "$N")
worker_processes 2;
events { worker_connections 8192; }
http {
$(nginx_http_common "$N")
  upstream backend {
    server 127.0.0.1:$P_BACKEND;
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  "$NGINX" -p "$N" -c "$N/nginx.conf" >"$N/stdout.log" 2>&1 &
  PIDS+=($!); PID_NGINX=$!
  wait_http "http://127.0.0.1:$P_NGINX/" "$PID_NGINX" "$N/error.log" 200
fi

if want haproxy; then
  H="$TMP/haproxy"; mkdir -p "$H"
  cat >"$H/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 10000
  no strict-limits
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  server s1 127.0.0.1:$P_BACKEND
EOF
  "$HAPROXY" -db -f "$H/haproxy.cfg" >"$H/haproxy.log" 2>&1 &
  PIDS+=($!); PID_HAPROXY=$!
  wait_http "http://127.0.0.1:$P_HAPROXY/" "$PID_HAPROXY" "$H/haproxy.log" 200
fi

port_of() { case "$1" in gateway) echo "$P_GW";; nginx) echo "$P_NGINX";; haproxy) echo "$P_HAPROXY";; esac; }
pid_of() { case "$1" in gateway) echo "$PID_GW";; nginx) echo "$PID_NGINX";; haproxy) echo "$PID_HAPROXY";; esac; }

gateway_metric() { # sum of switchyard_upstream_connections_total, or empty when not exposed
  "$CURL" -s -m 5 "http://127.0.0.1:$P_ADMIN/metrics" 2>/dev/null |
    awk '/^switchyard_upstream_connections_total[{ ]/ {s += $NF; n++} END {if (n) printf "%d", s}'
}

run_wrk() { # proxy, connections, seconds, out
  timeout $(( $3 + 30 )) "$WRK" -t"$WRK_THREADS" -c"$2" -d"$3"s "http://127.0.0.1:$(port_of "$1")/" >"$4" 2>&1 ||
    { echo "error: wrk against $1 failed:" >&2; cat "$4" >&2; exit 1; }
  kill -0 "$(pid_of "$1")" 2>/dev/null || { echo "error: $1 exited during the run" >&2; exit 1; }
}

echo "switchyard upstream reuse: new backend connections per 100 000 requests" >&2
echo "  gateway threads=2, nginx 2 workers (upstream keepalive 64 each), haproxy nbthread 2 (http-reuse always)" >&2
echo "  wrk -t$WRK_THREADS, warm-up $WARMUP then $DURATION at each of: ${CONNS[*]} connections" >&2
want gateway && echo "  gateway: $GATEWAY_BIN" >&2

ROWS=()
for p in "${PROXIES[@]}"; do
  for c in "${CONNS[@]}"; do
    run_wrk "$p" "$c" "$WARM_S" "$TMP/warm-$p-$c.txt"
    sleep 0.5
    a0="$(accepts)"
    m0=""; [ "$p" = gateway ] && m0="$(gateway_metric)"
    out="$TMP/wrk-$p-$c.txt"
    run_wrk "$p" "$c" "$DUR_S" "$out"
    a1="$(accepts)"
    m1=""; [ "$p" = gateway ] && m1="$(gateway_metric)"
    reqs="$(awk '/requests in/ {print $1}' "$out")"
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    errs="$(awk '/Non-2xx or 3xx responses:/{n+=$NF} /Socket errors:/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' "$out")"
    [ -n "$reqs" ] && [ -n "$a0" ] && [ -n "$a1" ] || { echo "error: could not read counts (wrk output follows)" >&2; cat "$out" >&2; exit 1; }
    new=$(( a1 - a0 - 1 ))   # the second stub_status read's own connection
    per="$(awk -v n="$new" -v r="$reqs" 'BEGIN{ printf "%.1f", (r > 0 ? n * 100000 / r : 0) }')"
    metric="-"
    if [ -n "$m0" ] && [ -n "$m1" ]; then
      metric="$(awk -v n="$(( m1 - m0 ))" -v r="$reqs" 'BEGIN{ printf "%.1f", (r > 0 ? n * 100000 / r : 0) }')"
    fi
    printf '  %-8s c=%-4s %9s requests  %6s new upstream connections  %8s per 100k  errors %s\n' \
      "$p" "$c" "$reqs" "$new" "$per" "$errs" >&2
    ROWS+=("$(printf '%-9s %7s %11s %10.0f %9s %10s %14s %7s' "$p" "$c" "$reqs" "$rps" "$new" "$per" "$metric" "$errs")")
  done
done

echo
echo "== upstream reuse: new backend connections per 100 000 requests (after warm-up, $DURATION runs) =="
printf '%-9s %7s %11s %10s %9s %10s %14s %7s\n' proxy clients requests "req/s" "new conns" "per 100k" "gw metric/100k" errors
for r in "${ROWS[@]}"; do echo "$r"; done
echo "(new conns: backend stub_status accepts delta; gw metric: the gateway's own switchyard_upstream_connections_total, '-' when absent)"
