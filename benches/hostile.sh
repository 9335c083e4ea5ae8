#!/usr/bin/env bash
# Hostile input: sends the same malformed and ambiguous HTTP/1 requests (request smuggling
# shapes, bad chunking, obs-fold, NUL and control bytes, oversize heads, bad and duplicate
# Host, absolute-form URIs, %00 and dot-segments in paths, invalid methods and versions) to
# the gateway, nginx and HAProxy, each in front of its own recording backend, and prints per
# case what each proxy answered and what reached its backend.
#
#   benches/hostile.sh                 plain table on stdout (progress on stderr)
#   benches/hostile.sh --markdown      the table as Markdown (what README.md shows)
#   ONLY=cl-te,te-cl benches/hostile.sh
#
# Environment:
#   PROXIES="gateway nginx haproxy"   which proxies
#   GATEWAY_BIN=...   gateway binary (default target/debug/gateway, built if missing: this
#                     measures behaviour, not speed, so a debug build is fine)
#   WAIT=2            seconds to wait for each answer
#   ONLY=ids          comma-separated case ids (see benches/hostile.py)
#   INSTALL=0         do not apt-get install missing packages (error instead)
#   KEEP=1            keep the temp dir (configs, logs) and print its path
#
# Every proxy gets the same 8 KiB head limit. Loopback only, free ports; see benches/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench_lib.sh
. "$ROOT/benches/bench_lib.sh"
MD=()
case "${1:-}" in
  -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
  --markdown) MD=(--markdown) ;;
  "") ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac
read -r -a PROXIES <<<"${PROXIES:-gateway nginx haproxy}"
for p in "${PROXIES[@]}"; do
  case "$p" in gateway|nginx|haproxy) ;; *) echo "error: unknown proxy '$p' in PROXIES (gateway nginx haproxy)" >&2; exit 2 ;; esac
done
want() { local x; for x in "${PROXIES[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/debug/gateway}"

pkgs=(python3:python3 curl:curl)
want nginx && pkgs+=(nginx:nginx)
want haproxy && pkgs+=(haproxy:haproxy)
ensure_packages "${pkgs[@]}"
export CURL
PYTHON="$(find_tool python3)"; CURL="$(find_tool curl)"
NGINX="$(find_tool nginx || true)"; HAPROXY="$(find_tool haproxy || true)"

make_tmp switchyard-hostile
read -r P_GW P_GW_B P_ADMIN P_NG P_NG_B P_HA P_HA_B <<<"$(free_ports 7)"
ARGS=()

if want gateway; then
  if [ ! -x "$GATEWAY_BIN" ]; then
    if [ "$GATEWAY_BIN" = "$ROOT/target/debug/gateway" ]; then
      echo "note: building $GATEWAY_BIN (cargo build --bin gateway)" >&2
      (cd "$ROOT" && cargo build --bin gateway) >&2
    else
      echo "error: GATEWAY_BIN=$GATEWAY_BIN is not an executable file" >&2; exit 1
    fi
  fi
  G="$TMP/gateway"; mkdir -p "$G"
  cat >"$G/gateway.toml" <<EOF
[server]
threads = 1
access_log = "off"
max_header_bytes = 8192
client_header_timeout = "5s"

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
retries = 0
backends = [ { addr = "127.0.0.1:$P_GW_B" } ]
EOF
  "$GATEWAY_BIN" -c "$G/gateway.toml" >"$G/gateway.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$P_ADMIN/health/ready" "$!" "$G/gateway.log" 200
  ARGS+=(--target "gateway:$P_GW:$P_GW_B")
fi

if want nginx; then
  N="$TMP/nginx"; mkdir -p "$N"
  cat >"$N/nginx.conf" <<EOF
$(nginx_common "$N")
worker_processes 1;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $N/client_body;
  proxy_temp_path $N/proxy;
  fastcgi_temp_path $N/fastcgi;
  uwsgi_temp_path $N/uwsgi;
  scgi_temp_path $N/scgi;
  client_header_timeout 5s;
  large_client_header_buffers 4 8k;
  upstream backend { server 127.0.0.1:$P_NG_B; keepalive 8; }
  server {
    listen 127.0.0.1:$P_NG;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream off;
    }
  }
}
EOF
  "$NGINX" -p "$N" -c "$N/nginx.conf" >"$N/stdout.log" 2>&1 &
  PIDS+=($!)
  wait_tcp "$P_NG" "$!" "$N/error.log"
  ARGS+=(--target "nginx:$P_NG:$P_NG_B")
fi

if want haproxy; then
  H="$TMP/haproxy"; mkdir -p "$H"
  cat >"$H/haproxy.cfg" <<EOF
global
  nbthread 1
  tune.bufsize 16384
  tune.maxrewrite 8192
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-request 5s
frontend fe
  bind 127.0.0.1:$P_HA
  default_backend be
backend be
  retries 0
  server s1 127.0.0.1:$P_HA_B
EOF
  "$HAPROXY" -db -f "$H/haproxy.cfg" >"$H/haproxy.log" 2>&1 &
  PIDS+=($!)
  wait_tcp "$P_HA" "$!" "$H/haproxy.log"
  ARGS+=(--target "haproxy:$P_HA:$P_HA_B")
fi

echo "hostile input: ${PROXIES[*]} (each in front of its own recording backend), head limit 8 KiB" >&2
"$PYTHON" "$ROOT/benches/hostile.py" "${ARGS[@]}" "${MD[@]}" --wait "${WAIT:-2}" --only "${ONLY:-}"
