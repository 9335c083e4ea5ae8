#!/usr/bin/env bash
# Throughput and tail latency of the gateway next to nginx and HAProxy, all proxying to the
# same nginx backend on this machine, measured in the same run so the ratios mean something.
#
#   benches/load.sh                 small body ("ok")
#   benches/load.sh --body 1m       the backend answers 1 MiB instead
#
# Environment:
#   DURATION=10s          length of each measured wrk run
#   PASSES=2              measured passes over the proxies, in alternating order (one run of
#                         each proxy per pass); more passes average out a noisy machine, and
#                         the gateway / bare ratio is also printed per pass
#   WARMUP=2s             wrk warm-up of each proxy before the measured runs
#   CONNECTIONS=64        wrk connections
#   GATEWAY_BIN=...       gateway binary (default target/release/gateway, built if missing)
#   GATEWAY_SERVER_CONF   TOML lines put inside the gateway's [server] table
#   EXTRA_GATEWAY_CONF    TOML appended at the end of the gateway config (bare keys land in
#                         the [[upstream]] table; new [tables] are fine too)
#   BARE_PINGORA_BIN=...  also bench this binary as "bare pingora"; it is started as
#                         `BIN <listen addr> <backend addr>`
#   PROXIES="gateway nginx haproxy"   which to bench (add "bare" = BARE_PINGORA_BIN); a
#                         ratio whose proxy was left out prints n/a
#   NGINX_PROXY_CONF      extra directives for the nginx proxy's location (e.g. "proxy_buffering off;");
#                         with --body 1m it defaults to "proxy_buffers 16 64k;" (set it empty for
#                         nginx's stock 8 x 4k buffers)
#   KEEP=1                keep the temp dir (configs, logs, raw wrk output) and print its path
#
# Pinning: every proxy on CPU 0, wrk and the backend on CPU 1 (taskset). See benches/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BODY=small
while [ $# -gt 0 ]; do
  case "$1" in
    --body) BODY="${2:-}"; shift 2 || { echo "--body needs a value (small or 1m)" >&2; exit 2; } ;;
    --body=*) BODY="${1#--body=}"; shift ;;
    -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$BODY" in small|1m|1M) ;; *) echo "--body must be small or 1m" >&2; exit 2 ;; esac

DURATION="${DURATION:-10s}"
PASSES="${PASSES:-2}"
case "$PASSES" in ''|*[!0-9]*|0|1) echo "error: PASSES must be a whole number of at least 2" >&2; exit 2 ;; esac
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/release/gateway}"
BARE_PINGORA_BIN="${BARE_PINGORA_BIN:-}"
if [ -n "${PROXIES:-}" ]; then read -r -a PROXIES <<<"$PROXIES"
elif [ -n "$BARE_PINGORA_BIN" ]; then PROXIES=(gateway nginx haproxy bare)
else PROXIES=(gateway nginx haproxy); fi
for p in "${PROXIES[@]}"; do
  case "$p" in gateway|nginx|haproxy) ;; bare) [ -n "$BARE_PINGORA_BIN" ] || { echo "error: PROXIES names bare but BARE_PINGORA_BIN is not set" >&2; exit 2; } ;;
    *) echo "error: unknown proxy '$p' in PROXIES (gateway nginx haproxy bare)" >&2; exit 2 ;; esac
done
want() { local x; for x in "${PROXIES[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

# ---------------------------------------------------------------- tools
find_tool() { # name -> path, looking in PATH and the sbin dirs Debian uses
  command -v "$1" 2>/dev/null || { for d in /usr/sbin /sbin /usr/local/sbin; do
    [ -x "$d/$1" ] && { echo "$d/$1"; return 0; }; done; return 1; }
}
missing=()
NGINX="$(find_tool nginx)" || missing+=("nginx (Debian package nginx)")
HAPROXY="$(find_tool haproxy)" || missing+=("haproxy (Debian package haproxy)")
WRK="$(find_tool wrk)" || missing+=("wrk (Debian package wrk)")
CURL="$(find_tool curl)" || missing+=("curl (Debian package curl)")
TASKSET="$(find_tool taskset)" || missing+=("taskset (Debian package util-linux)")
PYTHON="$(find_tool python3)" || missing+=("python3 (Debian package python3)")
if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do echo "error: missing tool: $m" >&2; done
  echo "hint: run .ci/setup (as root) to install what the benches need" >&2
  exit 1
fi
NCPU="$(nproc)"
if [ "$NCPU" -lt 2 ]; then
  echo "error: needs at least 2 CPUs for the pinning (proxy on CPU 0, wrk + backend on CPU 1)" >&2
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
if [ -n "$BARE_PINGORA_BIN" ] && [ ! -x "$BARE_PINGORA_BIN" ]; then
  echo "error: BARE_PINGORA_BIN=$BARE_PINGORA_BIN is not an executable file" >&2
  exit 1
fi

secs() { # "10s" "2m" "500ms" "10" -> whole seconds (at least 1)
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
TMP="$(mktemp -d /tmp/switchyard-load.XXXXXX)"
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
    # nginx workers of a master that had to be killed
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

free_ports() { # N distinct free ports on 127.0.0.1, below the ephemeral range
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
read -r P_BACKEND P_GW P_ADMIN P_NGINX P_HAPROXY P_BARE <<<"$(free_ports 6)"

die_with_log() { # message, log file
  echo "error: $1" >&2
  [ -f "$2" ] && { echo "--- last lines of $2:" >&2; tail -n 30 "$2" >&2; }
  exit 1
}

wait_http() { # url, pid, log, [want status]; waits up to 30 s
  local url="$1" pid="$2" log="$3" want="${4:-}" code
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || die_with_log "process for $url exited during start-up" "$log"
    code="$("$CURL" -s -o /dev/null -m 1 -w '%{http_code}' "$url" 2>/dev/null || true)"
    if [ -n "$want" ]; then [ "$code" = "$want" ] && return 0
    else [ -n "$code" ] && [ "$code" != 000 ] && return 0; fi
    sleep 0.1
  done
  die_with_log "$url did not answer${want:+ $want} within 30 s" "$log"
}

nginx_common() { # prefix dir -> the lines every nginx config here shares
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

# ---------------------------------------------------------------- backend (CPU 1)
B="$TMP/backend"; mkdir -p "$B/www"
if [ "$BODY" = small ]; then
  BACKEND_LOC='return 200 "ok";'
  BODY_DESC='2-byte body ("ok")'
else
  head -c 1048576 /dev/zero | tr '\0' 'x' >"$B/www/body"
  chmod -R a+rX "$B/www"
  BACKEND_LOC="root $B/www; default_type application/octet-stream; rewrite ^ /body break;"
  BODY_DESC='1 MiB body (static file)'
  # nginx's default proxy buffers (8 x 4k) make it copy a 1 MiB body in page-sized pieces and
  # measure nginx's defaults rather than its proxying; give it buffers comparable to the others'.
  NGINX_PROXY_CONF="${NGINX_PROXY_CONF-proxy_buffers 16 64k;}"
fi
cat >"$B/nginx.conf" <<EOF
$(nginx_common "$B")
worker_processes 1;
events { worker_connections 4096; }
http {
$(nginx_http_common "$B")
  sendfile on;
  server {
    listen 127.0.0.1:$P_BACKEND reuseport backlog=4096;
    location / { $BACKEND_LOC }
  }
}
EOF
"$TASKSET" -c 1 "$NGINX" -p "$B" -c "$B/nginx.conf" >"$B/stdout.log" 2>&1 &
PIDS+=($!); PID_BACKEND=$!
wait_http "http://127.0.0.1:$P_BACKEND/" "$PID_BACKEND" "$B/error.log" 200

# ---------------------------------------------------------------- gateway (CPU 0)
if want gateway; then
G="$TMP/gateway"; mkdir -p "$G"
cat >"$G/gateway.toml" <<EOF
[server]
threads = 1
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
"$TASKSET" -c 0 "$GATEWAY_BIN" -c "$G/gateway.toml" >"$G/gateway.log" 2>&1 &
PIDS+=($!); PID_GW=$!
wait_http "http://127.0.0.1:$P_ADMIN/health/ready" "$PID_GW" "$G/gateway.log" 200
wait_http "http://127.0.0.1:$P_GW/" "$PID_GW" "$G/gateway.log" 200
fi

# ---------------------------------------------------------------- nginx proxy (CPU 0)
if want nginx; then
N="$TMP/nginx"; mkdir -p "$N"
cat >"$N/nginx.conf" <<EOF
$(nginx_common "$N")
worker_processes 1;
events { worker_connections 4096; }
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
      proxy_max_temp_file_size 0;
      ${NGINX_PROXY_CONF:-}
    }
  }
}
EOF
"$TASKSET" -c 0 "$NGINX" -p "$N" -c "$N/nginx.conf" >"$N/stdout.log" 2>&1 &
PIDS+=($!); PID_NGINX=$!
wait_http "http://127.0.0.1:$P_NGINX/" "$PID_NGINX" "$N/error.log" 200
fi

# ---------------------------------------------------------------- HAProxy (CPU 0)
if want haproxy; then
H="$TMP/haproxy"; mkdir -p "$H"
cat >"$H/haproxy.cfg" <<EOF
global
  nbthread 1
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
"$TASKSET" -c 0 "$HAPROXY" -db -f "$H/haproxy.cfg" >"$H/haproxy.log" 2>&1 &
PIDS+=($!); PID_HAPROXY=$!
wait_http "http://127.0.0.1:$P_HAPROXY/" "$PID_HAPROXY" "$H/haproxy.log" 200
fi

# ---------------------------------------------------------------- bare pingora (CPU 0), optional
if want bare; then
  R="$TMP/bare"; mkdir -p "$R"
  "$TASKSET" -c 0 "$BARE_PINGORA_BIN" "127.0.0.1:$P_BARE" "127.0.0.1:$P_BACKEND" >"$R/bare.log" 2>&1 &
  PIDS+=($!); PID_BARE=$!
  wait_http "http://127.0.0.1:$P_BARE/" "$PID_BARE" "$R/bare.log" 200
fi

port_of() { case "$1" in gateway) echo "$P_GW";; nginx) echo "$P_NGINX";; haproxy) echo "$P_HAPROXY";; bare) echo "$P_BARE";; esac; }
pid_of() { case "$1" in gateway) echo "$PID_GW";; nginx) echo "$PID_NGINX";; haproxy) echo "$PID_HAPROXY";; bare) echo "$PID_BARE";; esac; }
label_of() { case "$1" in gateway) echo "gateway";; nginx) echo "nginx";; haproxy) echo "haproxy";; bare) echo "bare pingora";; esac; }

cpu_ticks() { # total utime+stime (clock ticks) of a process and its direct children (nginx workers)
  local total=0 p f
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    f="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
    f="${f##*) }"                         # drop "pid (comm) "
    set -- $f
    total=$(( total + ${12} + ${13} ))    # fields 14 and 15 of the full line
  done
  echo "$total"
}
CLK_TCK="$(getconf CLK_TCK)"

run_wrk() { # proxy, seconds, output file
  local port; port="$(port_of "$1")"
  # WRK_HEADER: one extra request header (e.g. a session cookie for the affinity bench).
  timeout $(( $2 + 30 )) "$TASKSET" -c 1 "$WRK" -t1 -c"$CONNECTIONS" -d"$2"s --latency \
    ${WRK_HEADER:+-H "$WRK_HEADER"} "http://127.0.0.1:$port/" >"$3" 2>&1 || { echo "error: wrk against $1 failed:" >&2; cat "$3" >&2; exit 1; }
}

to_ms() { # wrk latency value "812.00us" "1.23ms" "2.01s" -> ms
  awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /m$/) n*=60000; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}

declare -A RPS P99 ERRS CPU
bench_one() { # proxy, run number
  local p="$1" n="$2" out="$TMP/wrk-$1-$2.txt" t0 t1 rps p99 errs
  t0="$(cpu_ticks "$(pid_of "$p")")"
  run_wrk "$p" "$DUR_S" "$out"
  t1="$(cpu_ticks "$(pid_of "$p")")"
  rps="$(awk '/^Requests\/sec:/{print $2}' "$out")"
  p99="$(awk '$1=="99%"{print $2}' "$out")"
  errs="$(awk '/Non-2xx or 3xx responses:/{n+=$NF} /Socket errors:/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' "$out")"
  [ -n "$rps" ] && [ -n "$p99" ] || { echo "error: could not parse wrk output:" >&2; cat "$out" >&2; exit 1; }
  RPS[$p,$n]="$rps"; P99[$p,$n]="$(to_ms "$p99")"; ERRS[$p,$n]="$errs"
  CPU[$p,$n]="$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v d="$DUR_S" 'BEGIN{printf "%.0f", (b-a)/hz/d*100}')"
  printf '  run %s  %-13s %10.0f req/s   p99 %8.2f ms   proxy CPU %3s%%   errors %s\n' \
    "$n" "$(label_of "$p")" "$rps" "${P99[$p,$n]}" "${CPU[$p,$n]}" "$errs" >&2
}

echo "switchyard load bench: $BODY_DESC, wrk -t1 -c$CONNECTIONS -d$DURATION --latency, warm-up $WARMUP each" >&2
echo "  proxies on CPU 0 (gateway threads=1, nginx 1 worker, haproxy nbthread 1); wrk + backend nginx on CPU 1" >&2
want gateway && echo "  gateway: $GATEWAY_BIN" >&2
want bare && echo "  bare pingora: $BARE_PINGORA_BIN" >&2

busy_pct() { # share of all CPUs busy over one second, from /proc/stat
  local a b
  a="$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"; sleep 1
  b="$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"
  awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); t=(y[1]-x[1])+(y[2]-x[2]); printf "%.0f", (t > 0 ? 100*(y[1]-x[1])/t : 0)}'
}
BUSY="$(busy_pct)"
if [ "$BUSY" -gt 15 ]; then
  echo "warning: the machine is not idle ($BUSY% of the CPUs busy before the bench); numbers will be noisy" >&2
fi
echo "warm-up..." >&2
for p in "${PROXIES[@]}"; do run_wrk "$p" "$WARM_S" "$TMP/warm-$p.txt"; done

REVERSED=()
for (( i=${#PROXIES[@]}-1; i>=0; i-- )); do REVERSED+=("${PROXIES[$i]}"); done
for (( n=1; n<=PASSES; n++ )); do
  if (( n % 2 )); then ORDER=("${PROXIES[@]}"); else ORDER=("${REVERSED[@]}"); fi
  echo "pass $n (${ORDER[*]}):" >&2
  for p in "${ORDER[@]}"; do bench_one "$p" "$n"; done
done

mean_of() { # proxy, array name (RPS or P99) -> mean over the passes
  local p="$1" v="" n
  for (( n=1; n<=PASSES; n++ )); do
    if [ "$2" = RPS ]; then v+="${RPS[$p,$n]} "; else v+="${P99[$p,$n]} "; fi
  done
  awk -v v="$v" 'BEGIN{k=split(v,a," "); s=0; for(i=1;i<=k;i++) s+=a[i]; printf "%.2f", s/k}'
}
declare -A MRPS MP99
echo
echo "== load: $BODY_DESC, $CONNECTIONS connections, $PASSES x $DURATION per proxy (mean of the runs) =="
printf '%-14s %12s %12s %12s %10s %9s %8s\n' proxy "req/s mean" "req/s min" "req/s max" "p99 ms" "proxy CPU" errors
for p in "${PROXIES[@]}"; do
  MRPS[$p]="$(mean_of "$p" RPS)"
  MP99[$p]="$(mean_of "$p" P99)"
  lo=""; hi=""; cpu=0; errs=0
  for (( n=1; n<=PASSES; n++ )); do
    r="${RPS[$p,$n]}"
    if [ -z "$lo" ] || awk -v a="$r" -v b="$lo" 'BEGIN{exit !(a<b)}'; then lo="$r"; fi
    if [ -z "$hi" ] || awk -v a="$r" -v b="$hi" 'BEGIN{exit !(a>b)}'; then hi="$r"; fi
    cpu=$(( cpu + ${CPU[$p,$n]} )); errs=$(( errs + ${ERRS[$p,$n]} ))
  done
  printf '%-14s %12.0f %12.0f %12.0f %10.2f %8s%% %8s\n' "$(label_of "$p")" "${MRPS[$p]}" \
    "$lo" "$hi" "${MP99[$p]}" "$(( cpu / PASSES ))" "$errs"
done
echo
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN{ if (a == "" || b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }
printf '%-22s %8s %8s\n' ratio "req/s" "p99"
printf '%-22s %8s %8s\n' "gateway / nginx" "$(ratio "${MRPS[gateway]:-}" "${MRPS[nginx]:-}")" "$(ratio "${MP99[gateway]:-}" "${MP99[nginx]:-}")"
printf '%-22s %8s %8s\n' "gateway / haproxy" "$(ratio "${MRPS[gateway]:-}" "${MRPS[haproxy]:-}")" "$(ratio "${MP99[gateway]:-}" "${MP99[haproxy]:-}")"
if want bare; then
  printf '%-22s %8s %8s\n' "gateway / bare pingora" "$(ratio "${MRPS[gateway]:-}" "${MRPS[bare]:-}")" "$(ratio "${MP99[gateway]:-}" "${MP99[bare]:-}")"
  if want gateway; then
    per=""
    for (( n=1; n<=PASSES; n++ )); do per+="$(ratio "${RPS[gateway,$n]}" "${RPS[bare,$n]}") "; done
    echo "gateway / bare pingora req/s per pass: $per"
  fi
fi
echo "(req/s ratio above 1: gateway faster; p99 ratio below 1: gateway's tail shorter)"
low=()
for p in "${PROXIES[@]}"; do
  for (( n=1; n<=PASSES; n++ )); do [ "${CPU[$p,$n]}" -lt 90 ] && { low+=("$(label_of "$p") run $n: ${CPU[$p,$n]}%"); }; done
done
if [ ${#low[@]} -gt 0 ]; then
  echo "warning: proxy CPU below 90% in: ${low[*]}"
  echo "  the proxy was not the bottleneck there (another process on CPU 0, or wrk/backend on CPU 1 saturated);"
  echo "  those numbers do not measure the proxy: re-run on an idle machine"
fi
[ "$BUSY" -gt 15 ] && echo "warning: the machine was $BUSY% busy before the bench started"
exit 0
