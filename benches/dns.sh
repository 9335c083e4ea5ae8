#!/usr/bin/env bash
# Authoritative DNS on one core: queries per second for one geo name of the gateway's [gslb]
# responder next to gdnsd (geoip plugin, `nets` only) and PowerDNS (bind backend, a LUA
# record choosing by netmask; and the same name as a plain A record, PowerDNS's ceiling),
# all answering www.gslb.example.com A over UDP on 127.0.0.1, measured in the same run with
# dnsperf; then the latency percentiles of each at half of its own peak rate (dnsperf -Q,
# per-response latencies from dnsperf -v).
#
#   benches/dns.sh
#   SERVERS="gdnsd pdns" DURATION=3s benches/dns.sh
#
# Environment:
#   DURATION=5s           length of each measured dnsperf run
#   PASSES=2              measured peak passes over the servers, in alternating order
#   WARMUP=1s             dnsperf warm-up of each server
#   CLIENTS=1             dnsperf -c (client sockets)
#   OUTSTANDING=100       dnsperf -q (queries in flight)
#   HALF=0.5              the latency runs' rate as a share of each server's mean peak
#   SERVERS="gateway gdnsd pdns pdns-static"   which to measure; also "gdnsd-static" (a plain
#                         A record in gdnsd)
#   GATEWAY_BIN=...       gateway binary (default target/release/gateway, built if missing)
#   GATEWAY_SERVER_CONF   TOML lines put inside the gateway's [server] table
#   EXTRA_GSLB_CONF       TOML lines put inside the gateway's [gslb] table
#   INSTALL=0             do not apt-get install missing packages (error instead)
#   KEEP=1                keep the temp dir (configs, logs, raw dnsperf output) and print its path
#
# Pinning: every DNS server on CPU 0, dnsperf on CPU 1. Nothing listens on port 53 and no
# system service is started. When the gateway binary does not know [gslb] yet, the script
# says so and measures the others. See benches/README.md.
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
WARMUP="${WARMUP:-1s}"
CLIENTS="${CLIENTS:-1}"
OUTSTANDING="${OUTSTANDING:-100}"
HALF="${HALF:-0.5}"
GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/release/gateway}"
read -r -a SERVERS <<<"${SERVERS:-gateway gdnsd pdns pdns-static}"
for s in "${SERVERS[@]}"; do
  case "$s" in gateway|gdnsd|gdnsd-static|pdns|pdns-static) ;;
    *) echo "error: unknown server '$s' in SERVERS (gateway gdnsd gdnsd-static pdns pdns-static)" >&2; exit 2 ;; esac
done
want() { local x; for x in "${SERVERS[@]}"; do [ "${x%-static}" = "$1" ] && return 0; done; return 1; }

ZONE=gslb.example.com
QNAME="www.$ZONE"
GEO_ADDR=192.0.2.10        # the site whose cidrs hold 127.0.0.0/8: the right geo answer
OTHER_ADDR=198.51.100.10   # the other site, first in the fallback order: a wrong geo answer

# ---------------------------------------------------------------- tools
pkgs=(dnsperf:dnsperf taskset:util-linux python3:python3)
want gdnsd && pkgs+=(gdnsd:gdnsd)
want pdns && pkgs+=(pdns_server:pdns-server /usr/lib/x86_64-linux-gnu/pdns/libbindbackend.so:pdns-backend-bind)
ensure_packages "${pkgs[@]}"
DNSPERF="$(find_tool dnsperf)"; TASKSET="$(find_tool taskset)"; PYTHON="$(find_tool python3)"
GDNSD="$(find_tool gdnsd || true)"; PDNS="$(find_tool pdns_server || true)"
if want pdns && [ ! -e /usr/lib/x86_64-linux-gnu/pdns/libbindbackend.so ] && ! ls /usr/lib/*/pdns/libbindbackend.so >/dev/null 2>&1; then
  echo "error: PowerDNS's bind backend (Debian package pdns-backend-bind) is missing" >&2; exit 1
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "error: needs at least 2 CPUs for the pinning (server on CPU 0, dnsperf on CPU 1)" >&2
  exit 1
fi
DUR_S="$(secs "$DURATION")"
WARM_S="$(secs "$WARMUP")"

make_tmp switchyard-dns
declare -A PID_OF
read -r P_GW P_ADMIN P_HTTP P_GDNSD P_GDNSD_S P_PDNS P_PDNS_S <<<"$(free_ports 7)"
echo "$QNAME A" >"$TMP/queries.txt"

dns_answer() { # port -> "RCODE addr,addr" for one UDP query of QNAME A (no EDNS, no ECS)
  "$PYTHON" - "$1" "$QNAME" <<'EOF'
import random, socket, struct, sys
port, name = int(sys.argv[1]), sys.argv[2]
qid = random.randint(0, 65535)
q = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0)  # RD clear: an authoritative query
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(q, ("127.0.0.1", port))
r, _ = s.recvfrom(4096)
rid, flags, qd, an = struct.unpack(">HHHH", r[:8])
if rid != qid: sys.exit("id mismatch")
def skip(o):  # past a (possibly compressed) name
    while True:
        l = r[o]
        if l == 0: return o + 1
        if l & 0xC0 == 0xC0: return o + 2
        o += l + 1
o = 12
for _ in range(qd): o = skip(o) + 4
addrs = []
for _ in range(an):
    o = skip(o)
    t, c, ttl, rdlen = struct.unpack(">HHIH", r[o:o + 10]); o += 10
    if t == 1 and rdlen == 4: addrs.append(socket.inet_ntoa(r[o:o + 4]))
    o += rdlen
rcodes = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
print(rcodes.get(flags & 15, str(flags & 15)), ",".join(addrs) or "-")
EOF
}
wait_dns() { # name, port, pid, log: waits up to 30 s for an answer, then checks it is GEO_ADDR
  local name="$1" port="$2" pid="$3" log="$4" ans=""
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || die_with_log "$name exited during start-up" "$log"
    ans="$(dns_answer "$port" 2>/dev/null)" && break
    ans=""; sleep 0.2
  done
  [ -n "$ans" ] || die_with_log "$name did not answer $QNAME A on 127.0.0.1:$port within 30 s" "$log"
  [ "$ans" = "NOERROR $GEO_ADDR" ] || die_with_log "$name answered '$ans' for $QNAME A, not 'NOERROR $GEO_ADDR'" "$log"
  echo "  $name on 127.0.0.1:$port answers $QNAME A: $ans" >&2
}

# ---------------------------------------------------------------- gateway [gslb] (CPU 0)
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

# An idle HTTP listener: the contract does not say that a configuration of [gslb] alone is valid.
[[listener]]
name = "http"
addr = "127.0.0.1:$P_HTTP"

[gslb]
addr = "127.0.0.1:$P_GW"
zone = "$ZONE"
ttl = "30s"
nameservers = ["ns1.$ZONE"]
${EXTRA_GSLB_CONF:-}

[[gslb.site]]
name = "other"
addrs = ["$OTHER_ADDR"]
cidrs = ["10.0.0.0/8"]

[[gslb.site]]
name = "local"
addrs = ["$GEO_ADDR"]
cidrs = ["127.0.0.0/8"]

[[gslb.name]]
name = "www"
strategy = "geo"
sites = ["other", "local"]
EOF
  rc=0; gateway_check "$GATEWAY_BIN" "$G/gateway.toml" gslb || rc=$?
  if [ $rc != 0 ]; then
    [ $rc = 1 ] && GATEWAY_FATAL=1
    echo "*** gateway not measured: $GATEWAY_SKIP" >&2
    keep=(); for s in "${SERVERS[@]}"; do [ "$s" = gateway ] || keep+=("$s"); done; SERVERS=("${keep[@]}")
  else
    "$TASKSET" -c 0 "$GATEWAY_BIN" -c "$G/gateway.toml" >"$G/gateway.log" 2>&1 &
    PIDS+=($!); PID_OF[gateway]=$!
    wait_dns gateway "$P_GW" "$!" "$G/gateway.log"
  fi
fi
[ ${#SERVERS[@]} -gt 0 ] || { echo "error: nothing left to measure" >&2; exit 1; }

soa_ns() { # the records every peer zone file starts with
  cat <<EOF
\$TTL 30
@     IN SOA ns1 hostmaster 1 7200 1800 259200 30
@     IN NS  ns1
ns1   IN A   192.0.2.53
EOF
}

# ---------------------------------------------------------------- gdnsd (CPU 0)
start_gdnsd() { # name (gdnsd | gdnsd-static), port
  local name="$1" port="$2" d="$TMP/$1"
  mkdir -p "$d/zones"
  cat >"$d/config" <<EOF
options => {
  listen => [ 127.0.0.1:$port ]
  udp_threads => 1
  tcp_threads => 1
  run_dir => $d/run
  state_dir => $d/state
}
plugins => { geoip => {
  maps => {
    bench => {
      datacenters => [ other, local ]
      nets => { 127.0.0.0/8 => [ local ], 10.0.0.0/8 => [ other ] }
    }
  }
  resources => {
    www => { map => bench, dcmap => { local => $GEO_ADDR, other => $OTHER_ADDR } }
  }
}}
EOF
  { soa_ns
    if [ "$name" = gdnsd ]; then echo "www   30 DYNA geoip!www"; else echo "www   30 IN A $GEO_ADDR"; fi
  } >"$d/zones/$ZONE"
  "$TASKSET" -c 0 "$GDNSD" -c "$d" start >"$d/gdnsd.log" 2>&1 &
  PIDS+=($!); PID_OF[$name]=$!
  wait_dns "$name" "$port" "$!" "$d/gdnsd.log"
}

# ---------------------------------------------------------------- PowerDNS (CPU 0)
start_pdns() { # name (pdns | pdns-static), port
  local name="$1" port="$2" d="$TMP/$1"
  mkdir -p "$d"
  cat >"$d/pdns.conf" <<EOF
launch=bind
bind-config=$d/named.conf
local-address=127.0.0.1
local-port=$port
daemon=no
guardian=no
socket-dir=$d
receiver-threads=1
distributor-threads=1
reuseport=no
enable-lua-records=yes
security-poll-suffix=
disable-syslog=yes
loglevel=4
webserver=no
api=no
EOF
  echo "zone \"$ZONE\" { type master; file \"$d/$ZONE.zone\"; };" >"$d/named.conf"
  { soa_ns
    if [ "$name" = pdns ]; then
      echo "www   30 IN LUA A \";if netmask({'127.0.0.0/8'}) then return '$GEO_ADDR' elseif netmask({'10.0.0.0/8'}) then return '$OTHER_ADDR' else return '$OTHER_ADDR' end\""
    else echo "www   30 IN A $GEO_ADDR"; fi
  } >"$d/$ZONE.zone"
  "$TASKSET" -c 0 "$PDNS" --config-dir="$d" >"$d/pdns.log" 2>&1 &
  PIDS+=($!); PID_OF[$name]=$!
  wait_dns "$name" "$port" "$!" "$d/pdns.log"
}

echo "starting the servers:" >&2
for s in "${SERVERS[@]}"; do
  case "$s" in
    gdnsd) start_gdnsd gdnsd "$P_GDNSD" ;;
    gdnsd-static) start_gdnsd gdnsd-static "$P_GDNSD_S" ;;
    pdns) start_pdns pdns "$P_PDNS" ;;
    pdns-static) start_pdns pdns-static "$P_PDNS_S" ;;
  esac
done

port_of() { case "$1" in gateway) echo "$P_GW";; gdnsd) echo "$P_GDNSD";; gdnsd-static) echo "$P_GDNSD_S";; pdns) echo "$P_PDNS";; pdns-static) echo "$P_PDNS_S";; esac; }
pid_of() { echo "${PID_OF[$1]}"; }
label_of() { case "$1" in gateway) echo "gateway (geo)";; gdnsd) echo "gdnsd (geoip)";; gdnsd-static) echo "gdnsd (static A)";; pdns) echo "pdns (LUA)";; pdns-static) echo "pdns (static A)";; esac; }

run_dnsperf() { # server, seconds, output file, [extra dnsperf args...]
  local s="$1" d="$2" out="$3"; shift 3
  timeout $(( d + 30 )) "$TASKSET" -c 1 "$DNSPERF" -s 127.0.0.1 -p "$(port_of "$s")" -d "$TMP/queries.txt" \
    -l "$d" -c "$CLIENTS" -q "$OUTSTANDING" -T 1 -t 2 "$@" >"$out" 2>&1 \
    || { echo "error: dnsperf against $s failed:" >&2; tail -n 30 "$out" >&2; exit 1; }
}
parse_dnsperf() { # file -> "qps lost completed noerror"
  awk '/Queries per second:/{q=$4} /Queries lost:/{l=$3} /Queries completed:/{c=$3}
       /Response codes:/{for(i=3;i<=NF;i++) if($i=="NOERROR"){n=$(i+1)}} END{print q+0, l+0, c+0, n+0}' "$1"
}

declare -A QPS ERRS CPU
bench_one() { # server, run number
  local s="$1" n="$2" out="$TMP/dnsperf-$1-$2.txt" t0 t1 qps lost completed noerr
  t0="$(cpu_ticks "$(pid_of "$s")")"
  run_dnsperf "$s" "$DUR_S" "$out"
  t1="$(cpu_ticks "$(pid_of "$s")")"
  read -r qps lost completed noerr <<<"$(parse_dnsperf "$out")"
  [ "$completed" -gt 0 ] || { echo "error: dnsperf got no answer from $s:" >&2; cat "$out" >&2; exit 1; }
  QPS[$s,$n]="$qps"; ERRS[$s,$n]=$(( lost + completed - noerr )); CPU[$s,$n]="$(cpu_pct "$t0" "$t1" "$DUR_S")"
  printf '  run %s  %-17s %10.0f q/s   server CPU %3s%%   lost or not NOERROR %s\n' \
    "$n" "$(label_of "$s")" "$qps" "${CPU[$s,$n]}" "${ERRS[$s,$n]}" >&2
}

echo "switchyard DNS bench: $QNAME A over UDP, dnsperf -c $CLIENTS -q $OUTSTANDING -T 1 -l $DUR_S; $PASSES passes" >&2
echo "  servers on CPU 0 (one UDP thread each where they have the knob), dnsperf on CPU 1" >&2
BUSY="$(busy_pct)"
[ "$BUSY" -gt 15 ] && echo "warning: the machine is not idle ($BUSY% of the CPUs busy before the bench); numbers will be noisy" >&2
echo "warm-up..." >&2
for s in "${SERVERS[@]}"; do run_dnsperf "$s" "$WARM_S" "$TMP/warm-$s.txt"; done

REVERSED=()
for (( i=${#SERVERS[@]}-1; i>=0; i-- )); do REVERSED+=("${SERVERS[$i]}"); done
for (( n=1; n<=PASSES; n++ )); do
  if (( n % 2 )); then ORDER=("${SERVERS[@]}"); else ORDER=("${REVERSED[@]}"); fi
  echo "peak pass $n (${ORDER[*]}):" >&2
  for s in "${ORDER[@]}"; do bench_one "$s" "$n"; done
done

declare -A MQPS LAT
echo "latency at ${HALF} x each server's mean peak (dnsperf -Q, -v):" >&2
for s in "${SERVERS[@]}"; do
  v=""; for (( n=1; n<=PASSES; n++ )); do v+="${QPS[$s,$n]} "; done
  read -r MQPS[$s] _ _ <<<"$(stats "$v")"
  rate="$(awk -v m="${MQPS[$s]}" -v h="$HALF" 'BEGIN{r=int(m*h); print (r < 1 ? 1 : r)}')"
  out="$TMP/latency-$s.txt"
  run_dnsperf "$s" "$DUR_S" "$out" -Q "$rate" -v
  read -r qps lost completed noerr <<<"$(parse_dnsperf "$out")"
  # "> NOERROR name type seconds" per response; lost queries are not in the percentiles
  pct="$(awk '$1==">" && $2!="T" && $2!="I" {print $NF}' "$out" | sort -g | awk '
    {a[NR]=$1} END{ if (NR == 0) { print "- - - - 0"; exit }
      i50=int(NR*0.50); i99=int(NR*0.99); i999=int(NR*0.999); if(i50<1)i50=1; if(i99<1)i99=1; if(i999<1)i999=1
      printf "%.3f %.3f %.3f %.3f %d\n", a[i50]*1000, a[i99]*1000, a[i999]*1000, a[NR]*1000, NR }')"
  LAT[$s]="$rate $qps $lost $pct"
  read -r p50 p99 p999 pmax cnt <<<"$pct"
  printf '  %-17s at %7s q/s: got %8.0f q/s, p50 %s ms, p99 %s ms, p99.9 %s ms, max %s ms (%s answers, %s lost)\n' \
    "$(label_of "$s")" "$rate" "$qps" "$p50" "$p99" "$p999" "$pmax" "$cnt" "$lost" >&2
done

# ---------------------------------------------------------------- tables
echo
echo "== DNS peak: $QNAME A over UDP, dnsperf -c $CLIENTS -q $OUTSTANDING, $PASSES x $DURATION per server =="
printf '%-18s %11s %10s %10s %11s %7s\n' server "q/s mean" "q/s min" "q/s max" "server CPU" errors
for s in "${SERVERS[@]}"; do
  v=""; cpu=0; errs=0
  for (( n=1; n<=PASSES; n++ )); do v+="${QPS[$s,$n]} "; cpu=$(( cpu + ${CPU[$s,$n]} )); errs=$(( errs + ${ERRS[$s,$n]} )); done
  read -r m lo hi <<<"$(stats "$v")"
  printf '%-18s %11.0f %10.0f %10.0f %10s%% %7s\n' "$(label_of "$s")" "$m" "$lo" "$hi" "$(( cpu / PASSES ))" "$errs"
done
echo
echo "== latency at ${HALF} x each server's own mean peak (dnsperf -Q RATE -v, $DURATION; ms) =="
printf '%-18s %9s %9s %8s %8s %8s %8s %6s\n' server "rate q/s" "got q/s" p50 p99 p99.9 max lost
for s in "${SERVERS[@]}"; do
  read -r rate qps lost p50 p99 p999 pmax _ <<<"${LAT[$s]}"
  printf '%-18s %9s %9.0f %8s %8s %8s %8s %6s\n' "$(label_of "$s")" "$rate" "$qps" "$p50" "$p99" "$p999" "$pmax" "$lost"
done
echo
echo "== ratios (peak q/s means; p99 at half peak) =="
printf '%-30s %8s %8s\n' ratio "q/s" "p99"
for s in "${SERVERS[@]}"; do
  [ "$s" = gateway ] && continue
  printf '%-30s %8s %8s\n' "gateway / $(label_of "$s")" "$(ratio "${MQPS[gateway]:-}" "${MQPS[$s]:-}")" \
    "$(ratio "$(awk '{print $5}' <<<"${LAT[gateway]:-}")" "$(awk '{print $5}' <<<"${LAT[$s]:-}")")"
done
echo "(q/s above 1: the gateway answers more; p99 below 1: its tail is shorter. Each latency run is at its"
echo " own server's half peak, so a slower server is measured at a lower rate)"
low=()
for s in "${SERVERS[@]}"; do
  for (( n=1; n<=PASSES; n++ )); do [ "${CPU[$s,$n]}" -lt 90 ] && low+=("$(label_of "$s") run $n: ${CPU[$s,$n]}%"); done
done
if [ ${#low[@]} -gt 0 ]; then
  echo "note: server CPU below 90% in: ${low[*]}"
  echo "  there the server was not the bottleneck (dnsperf on CPU 1, or OUTSTANDING too low): raise CLIENTS/OUTSTANDING"
fi
[ "$BUSY" -gt 15 ] && echo "warning: the machine was $BUSY% busy before the bench started"
if [ -n "$GATEWAY_SKIP" ]; then
  echo "*** gateway not measured: $GATEWAY_SKIP"
  [ "$GATEWAY_FATAL" = 1 ] && exit 1
fi
exit 0
