#!/usr/bin/env bash
# L4 (TCP) proxying: the gateway's [[stream]] (protocol = "tcp") next to nginx `stream {}` and
# HAProxy `mode tcp`, plus direct connections to the backends as the limit, measured in the
# same run so the ratios mean something:
#   conn   new connections/s: wrk with "Connection: close" through the proxy to an nginx
#          HTTP backend (every request is a new client and backend connection)
#   ka     keep-alive requests/s through it (wrk, connections kept)
#   bulk   Gbit/s of one iperf3 TCP stream through it, and the proxy's CPU seconds per GB
#   idle   KiB of proxy RSS per idle TCP stream (IDLE_CONNS streams held open)
#
#   benches/l4.sh
#   TESTS="conn ka" PROXIES="nginx haproxy direct" DURATION=3s benches/l4.sh
#
# Environment:
#   DURATION=5s           length of each measured run (wrk and iperf3)
#   PASSES=2              measured passes over the targets, in alternating order
#   WARMUP=2s             wrk warm-up of each target before the conn and ka runs
#   CONNECTIONS=64        wrk connections (conn and ka)
#   BULK_STREAMS=1        parallel iperf3 streams (iperf3 -P)
#   IDLE_CONNS=5000       idle streams held per proxy (each costs the proxy two descriptors)
#   TESTS="conn ka bulk idle"          which figures to measure
#   PROXIES="gateway nginx haproxy direct"   which targets ("direct" = no proxy)
#   GATEWAY_BIN=...       gateway binary (default target/release/gateway, built if missing)
#   GATEWAY_SERVER_CONF   TOML lines put inside the gateway's [server] table
#   EXTRA_STREAM_CONF     TOML lines put inside each gateway [[stream]] table
#   INSTALL=0             do not apt-get install missing packages (error instead)
#   KEEP=1                keep the temp dir (configs, logs, raw output) and print its path
#
# Pinning: every proxy on CPU 0; wrk, iperf3 (client and server) and the backend nginx on
# CPU 1 (taskset). When the gateway binary does not know [[stream]] yet, the script says so
# and measures the other targets. See benches/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench_lib.sh
. "$ROOT/benches/bench_lib.sh"
case "${1:-}" in
  -h|--help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

DURATION="${DURATION:-5s}"
PASSES="${PASSES:-2}"
case "$PASSES" in ''|*[!0-9]*|0|1) echo "error: PASSES must be a whole number of at least 2" >&2; exit 2 ;; esac
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
BULK_STREAMS="${BULK_STREAMS:-1}"
IDLE_CONNS="${IDLE_CONNS:-5000}"
GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/release/gateway}"
read -r -a TESTS <<<"${TESTS:-conn ka bulk idle}"
read -r -a PROXIES <<<"${PROXIES:-gateway nginx haproxy direct}"
for t in "${TESTS[@]}"; do
  case "$t" in conn|ka|bulk|idle) ;; *) echo "error: unknown test '$t' in TESTS (conn ka bulk idle)" >&2; exit 2 ;; esac
done
for p in "${PROXIES[@]}"; do
  case "$p" in gateway|nginx|haproxy|direct) ;; *) echo "error: unknown target '$p' in PROXIES (gateway nginx haproxy direct)" >&2; exit 2 ;; esac
done
want() { local x; for x in "${PROXIES[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
want_test() { local x; for x in "${TESTS[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

# ---------------------------------------------------------------- tools
NGX_STREAM_MOD=/usr/lib/nginx/modules/ngx_stream_module.so
pkgs=(nginx:nginx curl:curl taskset:util-linux python3:python3)
want_test conn || want_test ka && pkgs+=(wrk:wrk)
want_test bulk && pkgs+=(iperf3:iperf3)
want nginx && pkgs+=("$NGX_STREAM_MOD:libnginx-mod-stream")
want haproxy && pkgs+=(haproxy:haproxy)
ensure_packages "${pkgs[@]}"
export CURL  # used by wait_http (bench_lib.sh)
NGINX="$(find_tool nginx)"; CURL="$(find_tool curl)"; TASKSET="$(find_tool taskset)"; PYTHON="$(find_tool python3)"
WRK="$(find_tool wrk || true)"; IPERF3="$(find_tool iperf3 || true)"; HAPROXY="$(find_tool haproxy || true)"
if [ "$(nproc)" -lt 2 ]; then
  echo "error: needs at least 2 CPUs for the pinning (proxy on CPU 0, load + backends on CPU 1)" >&2
  exit 1
fi
DUR_S="$(secs "$DURATION")"
WARM_S="$(secs "$WARMUP")"

# Idle streams need a descriptor each in the client and the backend, two in the proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
if want_test idle && [ "$NOFILE" != unlimited ] && [ $(( 2 * IDLE_CONNS + 512 )) -gt "$NOFILE" ]; then
  IDLE_CONNS=$(( (NOFILE - 512) / 2 ))
  echo "note: open files limit $NOFILE: holding $IDLE_CONNS idle streams per proxy" >&2
fi

make_tmp switchyard-l4
read -r P_BACKEND P_IPERF P_GW_HTTP P_GW_BULK P_ADMIN P_NG_HTTP P_NG_BULK P_HA_HTTP P_HA_BULK <<<"$(free_ports 9)"

# ---------------------------------------------------------------- backends (CPU 1)
B="$TMP/backend"; mkdir -p "$B"
cat >"$B/nginx.conf" <<EOF
$(nginx_common "$B")
worker_processes 1;
worker_rlimit_nofile $(( IDLE_CONNS + 2048 ));
events { worker_connections $(( IDLE_CONNS + 1024 )); }
http {
  access_log off;
  client_body_temp_path $B/client_body;
  proxy_temp_path $B/proxy;
  fastcgi_temp_path $B/fastcgi;
  uwsgi_temp_path $B/uwsgi;
  scgi_temp_path $B/scgi;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$P_BACKEND reuseport backlog=4096;
    location / { return 200 "ok"; }
  }
}
EOF
"$TASKSET" -c 1 "$NGINX" -p "$B" -c "$B/nginx.conf" >"$B/stdout.log" 2>&1 &
PIDS+=($!); PID_BACKEND=$!
wait_http "http://127.0.0.1:$P_BACKEND/" "$PID_BACKEND" "$B/error.log" 200
if want_test bulk; then
  "$TASKSET" -c 1 "$IPERF3" -s -B 127.0.0.1 -p "$P_IPERF" >"$B/iperf3.log" 2>&1 &
  PIDS+=($!); PID_IPERF=$!
  wait_tcp "$P_IPERF" "$PID_IPERF" "$B/iperf3.log"
fi

# ---------------------------------------------------------------- gateway (CPU 0)
GATEWAY_FATAL=0
if want gateway; then
  build_gateway "$GATEWAY_BIN"
  G="$TMP/gateway"; mkdir -p "$G"
  cat >"$G/gateway.toml" <<EOF
[server]
threads = 1
access_log = "off"
${GATEWAY_SERVER_CONF:-}

[admin]
addr = "127.0.0.1:$P_ADMIN"

[[stream]]
name = "http"
addr = "127.0.0.1:$P_GW_HTTP"
protocol = "tcp"
upstream = "http-backend"
idle_timeout = "10m"
${EXTRA_STREAM_CONF:-}

[[stream]]
name = "bulk"
addr = "127.0.0.1:$P_GW_BULK"
protocol = "tcp"
upstream = "iperf3"
idle_timeout = "10m"
${EXTRA_STREAM_CONF:-}

[[upstream]]
name = "http-backend"
algorithm = "round-robin"
backends = [ { addr = "127.0.0.1:$P_BACKEND" } ]

[[upstream]]
name = "iperf3"
algorithm = "round-robin"
backends = [ { addr = "127.0.0.1:$P_IPERF" } ]
EOF
  rc=0; gateway_check "$GATEWAY_BIN" "$G/gateway.toml" stream || rc=$?
  if [ $rc != 0 ]; then
    [ $rc = 1 ] && GATEWAY_FATAL=1
    echo "*** gateway not measured: $GATEWAY_SKIP" >&2
    keep=(); for p in "${PROXIES[@]}"; do [ "$p" = gateway ] || keep+=("$p"); done; PROXIES=("${keep[@]}")
  else
    "$TASKSET" -c 0 "$GATEWAY_BIN" -c "$G/gateway.toml" >"$G/gateway.log" 2>&1 &
    PIDS+=($!); PID_GW=$!
    wait_http "http://127.0.0.1:$P_ADMIN/health/ready" "$PID_GW" "$G/gateway.log" 200
    wait_http "http://127.0.0.1:$P_GW_HTTP/" "$PID_GW" "$G/gateway.log" 200
  fi
fi
[ ${#PROXIES[@]} -gt 0 ] || { echo "error: nothing left to measure" >&2; exit 1; }

# ---------------------------------------------------------------- nginx stream {} (CPU 0)
if want nginx; then
  N="$TMP/nginx"; mkdir -p "$N"
  cat >"$N/nginx.conf" <<EOF
load_module $NGX_STREAM_MOD;
$(nginx_common "$N")
worker_processes 1;
worker_rlimit_nofile $(( 2 * IDLE_CONNS + 2048 ));
events { worker_connections $(( 2 * IDLE_CONNS + 1024 )); }
stream {
  upstream http_backend { server 127.0.0.1:$P_BACKEND; }
  upstream iperf3 { server 127.0.0.1:$P_IPERF; }
  server { listen 127.0.0.1:$P_NG_HTTP backlog=4096; proxy_pass http_backend; proxy_timeout 10m; }
  server { listen 127.0.0.1:$P_NG_BULK; proxy_pass iperf3; proxy_timeout 10m; }
}
EOF
  "$TASKSET" -c 0 "$NGINX" -p "$N" -c "$N/nginx.conf" >"$N/stdout.log" 2>&1 &
  PIDS+=($!); PID_NGINX=$!
  wait_http "http://127.0.0.1:$P_NG_HTTP/" "$PID_NGINX" "$N/error.log" 200
fi

# ---------------------------------------------------------------- HAProxy mode tcp (CPU 0)
if want haproxy; then
  H="$TMP/haproxy"; mkdir -p "$H"
  cat >"$H/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $(( IDLE_CONNS + 1024 ))
  no strict-limits
defaults
  mode tcp
  maxconn $(( IDLE_CONNS + 1024 ))
  timeout connect 5s
  timeout client 10m
  timeout server 10m
frontend fe_http
  bind 127.0.0.1:$P_HA_HTTP
  default_backend be_http
frontend fe_bulk
  bind 127.0.0.1:$P_HA_BULK
  default_backend be_bulk
backend be_http
  server s1 127.0.0.1:$P_BACKEND
backend be_bulk
  server s1 127.0.0.1:$P_IPERF
EOF
  "$TASKSET" -c 0 "$HAPROXY" -db -f "$H/haproxy.cfg" >"$H/haproxy.log" 2>&1 &
  PIDS+=($!); PID_HAPROXY=$!
  wait_http "http://127.0.0.1:$P_HA_HTTP/" "$PID_HAPROXY" "$H/haproxy.log" 200
fi

http_port_of() { case "$1" in gateway) echo "$P_GW_HTTP";; nginx) echo "$P_NG_HTTP";; haproxy) echo "$P_HA_HTTP";; direct) echo "$P_BACKEND";; esac; }
bulk_port_of() { case "$1" in gateway) echo "$P_GW_BULK";; nginx) echo "$P_NG_BULK";; haproxy) echo "$P_HA_BULK";; direct) echo "$P_IPERF";; esac; }
pid_of() { case "$1" in gateway) echo "$PID_GW";; nginx) echo "$PID_NGINX";; haproxy) echo "$PID_HAPROXY";; direct) echo "";; esac; }
ticks_of() { local pid; pid="$(pid_of "$1")"; if [ -n "$pid" ]; then cpu_ticks "$pid"; else echo 0; fi; }

run_wrk() { # target, seconds, output file, close|keep
  local port hdr=(); port="$(http_port_of "$1")"
  [ "$4" = close ] && hdr=(-H "Connection: close")
  timeout $(( $2 + 30 )) "$TASKSET" -c 1 "$WRK" -t1 -c"$CONNECTIONS" -d"$2"s "${hdr[@]}" \
    "http://127.0.0.1:$port/" >"$3" 2>&1 || { echo "error: wrk against $1 failed:" >&2; cat "$3" >&2; exit 1; }
}

declare -A VAL CPU ERRS CPUGB
bench_wrk() { # test (conn|ka), target, run number
  local t="$1" p="$2" n="$3" out="$TMP/wrk-$1-$2-$3.txt" t0 t1 rps errs mode=keep
  [ "$t" = conn ] && mode=close
  t0="$(ticks_of "$p")"
  run_wrk "$p" "$DUR_S" "$out" "$mode"
  t1="$(ticks_of "$p")"
  rps="$(awk '/^Requests\/sec:/{print $2}' "$out")"
  errs="$(awk '/Non-2xx or 3xx responses:/{n+=$NF} /Socket errors:/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' "$out")"
  [ -n "$rps" ] || { echo "error: could not parse wrk output:" >&2; cat "$out" >&2; exit 1; }
  VAL[$t,$p,$n]="$rps"; ERRS[$t,$p,$n]="$errs"
  if [ "$p" = direct ]; then CPU[$t,$p,$n]="-"; else CPU[$t,$p,$n]="$(cpu_pct "$t0" "$t1" "$DUR_S")"; fi
  printf '  run %s  %-8s %10.0f %s   proxy CPU %4s%%   errors %s\n' "$n" "$p" "$rps" \
    "$([ "$t" = conn ] && echo conn/s || echo req/s)" "${CPU[$t,$p,$n]}" "$errs" >&2
}

bench_bulk() { # target, run number
  local p="$1" n="$2" out="$TMP/iperf3-$1-$2.json" t0 t1 port res
  port="$(bulk_port_of "$p")"
  t0="$(ticks_of "$p")"
  timeout $(( DUR_S + 30 )) "$TASKSET" -c 1 "$IPERF3" -c 127.0.0.1 -p "$port" -t "$DUR_S" -P "$BULK_STREAMS" \
    --connect-timeout 5000 -J >"$out" 2>&1 || { echo "error: iperf3 through $p failed:" >&2; cat "$out" >&2; exit 1; }
  t1="$(ticks_of "$p")"
  # "Gbit/s bytes seconds" as the receiver counted them
  res="$("$PYTHON" -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]["sum_received"]
print("%.4f %d %.3f" % (e["bits_per_second"]/1e9, e["bytes"], e["seconds"]))' "$out")" \
    || { echo "error: could not parse iperf3 output:" >&2; cat "$out" >&2; exit 1; }
  read -r gbps bytes isecs <<<"$res"
  VAL[bulk,$p,$n]="$gbps"; ERRS[bulk,$p,$n]=0
  if [ "$p" = direct ]; then CPU[bulk,$p,$n]="-"; CPUGB[$p,$n]="-"
  else
    CPU[bulk,$p,$n]="$(cpu_pct "$t0" "$t1" "$DUR_S")"
    CPUGB[$p,$n]="$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v by="$bytes" 'BEGIN{printf "%.4f", (b-a)/hz/(by/1e9)}')"
  fi
  printf '  run %s  %-8s %8.2f Gbit/s (%s GB in %s s)   proxy CPU %4s%%   CPU s/GB %s\n' "$n" "$p" "$gbps" \
    "$(awk -v b="$bytes" 'BEGIN{printf "%.2f", b/1e9}')" "$isecs" "${CPU[bulk,$p,$n]}" "${CPUGB[$p,$n]}" >&2
}

declare -A IDLE
bench_idle() { # proxy
  local p="$1" pid out
  pid="$(pid_of "$p")"
  if [ "$p" = nginx ]; then
    pid="$(ps -o pid= --ppid "$PID_NGINX" | head -n1 | tr -d ' ')"  # the worker serves the streams
  fi
  out="$("$PYTHON" "$ROOT/benches/idle_streams.py" --port "$(http_port_of "$p")" --pid "$pid" \
    --conns "$IDLE_CONNS" --settle "${SETTLE:-2}" --close-wait "${CLOSE_WAIT:-3}")" \
    || { echo "error: idle streams through $p failed" >&2; exit 1; }
  IDLE[$p]="$out"
  echo "  $p: $out" >&2
}
kv() { sed -n "s/.*\\b$2=\\([^ ]*\\).*/\\1/p" <<<"$1"; }

echo "switchyard L4 bench: targets ${PROXIES[*]}; tests ${TESTS[*]}; $PASSES x $DURATION per target and test" >&2
echo "  proxies on CPU 0 (gateway threads=1, nginx 1 worker, haproxy nbthread 1); wrk, iperf3 and the backends on CPU 1" >&2
BUSY="$(busy_pct)"
[ "$BUSY" -gt 15 ] && echo "warning: the machine is not idle ($BUSY% of the CPUs busy before the bench); numbers will be noisy" >&2

REVERSED=()
for (( i=${#PROXIES[@]}-1; i>=0; i-- )); do REVERSED+=("${PROXIES[$i]}"); done
for t in conn ka bulk; do
  want_test "$t" || continue
  case "$t" in
    conn) echo "new connections (wrk -t1 -c$CONNECTIONS, Connection: close):" >&2 ;;
    ka) echo "keep-alive requests (wrk -t1 -c$CONNECTIONS):" >&2 ;;
    bulk) echo "bulk (iperf3 -P $BULK_STREAMS):" >&2 ;;
  esac
  if [ "$t" != bulk ]; then
    for p in "${PROXIES[@]}"; do run_wrk "$p" "$WARM_S" "$TMP/warm-$t-$p.txt" "$([ "$t" = conn ] && echo close || echo keep)"; done
  fi
  for (( n=1; n<=PASSES; n++ )); do
    if (( n % 2 )); then ORDER=("${PROXIES[@]}"); else ORDER=("${REVERSED[@]}"); fi
    echo " pass $n (${ORDER[*]}):" >&2
    for p in "${ORDER[@]}"; do
      if [ "$t" = bulk ]; then bench_bulk "$p" "$n"; else bench_wrk "$t" "$p" "$n"; fi
    done
  done
done
if want_test idle; then
  echo "idle streams ($IDLE_CONNS per proxy, one HTTP request each, then held open):" >&2
  for p in "${PROXIES[@]}"; do [ "$p" = direct ] || bench_idle "$p"; done
fi

# ---------------------------------------------------------------- tables
declare -A MEAN
runs_of() { local n v=""; for (( n=1; n<=PASSES; n++ )); do v+="${VAL[$1,$2,$n]} "; done; echo "$v"; }
echo
for t in conn ka bulk; do
  want_test "$t" || continue
  case "$t" in
    conn) echo "== new connections/s: wrk -t1 -c$CONNECTIONS -d$DURATION, Connection: close; $PASSES runs each =="; unit="conn/s" ;;
    ka) echo "== keep-alive requests/s: wrk -t1 -c$CONNECTIONS -d$DURATION; $PASSES runs each =="; unit="req/s" ;;
    bulk) echo "== bulk: iperf3 -P $BULK_STREAMS -t $DUR_S (receiver's count); $PASSES runs each =="; unit="Gbit/s" ;;
  esac
  if [ "$t" = bulk ]; then
    printf '%-9s %12s %10s %10s %10s %10s\n' target "$unit mean" min max "CPU s/GB" "proxy CPU"
  else
    printf '%-9s %12s %10s %10s %10s %8s\n' target "$unit mean" min max "proxy CPU" errors
  fi
  for p in "${PROXIES[@]}"; do
    read -r m lo hi <<<"$(stats "$(runs_of "$t" "$p")")"
    MEAN[$t,$p]="$m"
    cpu=0; errs=0; gb=""
    for (( n=1; n<=PASSES; n++ )); do
      [ "${CPU[$t,$p,$n]}" = - ] || cpu=$(( cpu + ${CPU[$t,$p,$n]} ))
      errs=$(( errs + ${ERRS[$t,$p,$n]} ))
      [ "$t" = bulk ] && gb+="${CPUGB[$p,$n]} "
    done
    cpus="$( [ "$p" = direct ] && echo - || echo "$(( cpu / PASSES ))%")"
    if [ "$t" = bulk ]; then
      if [ "$p" = direct ]; then MEAN[cpugb,$p]="-"; else read -r MEAN[cpugb,$p] _ _ <<<"$(stats "$gb")"; fi
      printf '%-9s %12.2f %10.2f %10.2f %10s %10s\n' "$p" "$m" "$lo" "$hi" \
        "$([ "$p" = direct ] && echo - || printf '%.3f' "${MEAN[cpugb,$p]}")" "$cpus"
    else
      printf '%-9s %12.0f %10.0f %10.0f %10s %8s\n' "$p" "$m" "$lo" "$hi" "$cpus" "$errs"
    fi
  done
  echo
done
if want_test idle; then
  echo "== idle TCP streams: $IDLE_CONNS per proxy held open after one request each (RSS in KiB) =="
  printf '%-9s %6s %11s %10s %11s %12s\n' proxy held "RSS before" "RSS idle" "KiB/stream" "after close"
  for p in "${PROXIES[@]}"; do
    [ "$p" = direct ] && continue
    r="${IDLE[$p]}"; held="$(kv "$r" held)"; before="$(kv "$r" before)"; idle="$(kv "$r" idle)"
    per="$(awk -v a="$before" -v b="$idle" -v h="$held" 'BEGIN{ if (h > 0) printf "%.2f", (b-a)/h; else print "-" }')"
    MEAN[idle,$p]="$per"
    printf '%-9s %6s %11s %10s %11s %12s\n' "$p$([ "$p" = nginx ] && echo '*')" "$held" "$before" "$idle" "$per" "$(kv "$r" after)"
    f="$(kv "$r" failed)"; [ "$f" = 0 ] || echo "  (warning: $p: $f streams failed or were closed while idle: $(kv "$r" first_error))"
  done
  want nginx && echo "  (* nginx: its worker's RSS; the master serves no connection)"
  echo
fi

echo "== ratios (means above) =="
printf '%-18s %8s %8s %8s %9s %11s\n' ratio conn/s req/s Gbit/s "CPU s/GB" "KiB/stream"
row() { # label, a, b
  printf '%-18s %8s %8s %8s %9s %11s\n' "$1" "$(ratio "${MEAN[conn,$2]:-}" "${MEAN[conn,$3]:-}")" \
    "$(ratio "${MEAN[ka,$2]:-}" "${MEAN[ka,$3]:-}")" "$(ratio "${MEAN[bulk,$2]:-}" "${MEAN[bulk,$3]:-}")" \
    "$(ratio "${MEAN[cpugb,$2]:-}" "${MEAN[cpugb,$3]:-}")" "$(ratio "${MEAN[idle,$2]:-}" "${MEAN[idle,$3]:-}")"
}
row "gateway / nginx" gateway nginx
row "gateway / haproxy" gateway haproxy
for p in gateway nginx haproxy; do want "$p" && want direct && row "$p / direct" "$p" direct; done
echo "(conn/s, req/s, Gbit/s above 1: the first is faster; CPU s/GB and KiB/stream below 1: it spends less)"
echo "(X / direct: the share of the no-proxy limit kept; the direct runs put client and server on CPU 1 alone)"
low=()
for t in conn ka bulk; do
  want_test "$t" || continue
  for p in "${PROXIES[@]}"; do
    [ "$p" = direct ] && continue
    for (( n=1; n<=PASSES; n++ )); do [ "${CPU[$t,$p,$n]}" -lt 90 ] && low+=("$t $p run $n: ${CPU[$t,$p,$n]}%"); done
  done
done
if [ ${#low[@]} -gt 0 ]; then
  echo "note: proxy CPU below 90% in: ${low[*]}"
  echo "  there the proxy was not the bottleneck (the load generator and backend share CPU 1): those runs"
  echo "  measure the client side as much as the proxy; CPU s/GB still compares the proxies' cost"
fi
[ "$BUSY" -gt 15 ] && echo "warning: the machine was $BUSY% busy before the bench started"
if [ -n "$GATEWAY_SKIP" ]; then
  echo "*** gateway not measured: $GATEWAY_SKIP"
  [ "$GATEWAY_FATAL" = 1 ] && exit 1
fi
exit 0
