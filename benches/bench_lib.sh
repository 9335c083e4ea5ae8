# Shell helpers shared by benches/l4.sh and benches/dns.sh (sourced, not run). The
# conventions are load.sh's: loopback only, free ports in 20000-32000, a temp dir removed on
# exit (KEEP=1 keeps it), every started process stopped on exit, error and Ctrl-C.
# shellcheck shell=bash

find_tool() { # name -> path, looking in PATH and the sbin dirs Debian uses
  command -v "$1" 2>/dev/null || { for d in /usr/sbin /sbin /usr/local/sbin; do
    [ -x "$d/$1" ] && { echo "$d/$1"; return 0; }; done; return 1; }
}

# ensure_packages "tool:package" ... : installs the Debian packages of the tools (or files,
# when the tool part starts with /) that are missing, with apt-get, as root, without starting
# their system services (a policy-rc.d that denies every start while apt runs). INSTALL=0
# turns that off: then a missing tool is an error naming its package.
ensure_packages() {
  local need=() spec tool pkg
  for spec in "$@"; do
    tool="${spec%%:*}"; pkg="${spec#*:}"
    if [ "${tool:0:1}" = / ]; then [ -e "$tool" ] && continue
    else find_tool "$tool" >/dev/null && continue; fi
    case " ${need[*]} " in *" $pkg "*) ;; *) need+=("$pkg") ;; esac
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "${INSTALL:-1}" = 0 ] || [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing Debian packages: ${need[*]}" >&2
    echo "hint: as root: apt-get install --no-install-recommends ${need[*]}" \
         "(with a policy-rc.d that exits 101 so that no system service starts)" >&2
    exit 1
  fi
  echo "installing with apt-get: ${need[*]} (no system service is started)" >&2
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  local rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/dev/null || rc=$?
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ $rc -ne 0 ]; then echo "error: apt-get install ${need[*]} failed" >&2; exit 1; fi
}

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

# make_tmp PREFIX: creates $TMP and installs the cleanup trap that stops every pid in PIDS.
PIDS=()
make_tmp() {
  TMP="$(mktemp -d "/tmp/$1.XXXXXX")"
  chmod 755 "$TMP"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p c
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
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

free_ports() { # N distinct ports free for TCP and UDP on 127.0.0.1, below the ephemeral range
  "$PYTHON" - "$1" <<'EOF'
import random, socket, sys
n = int(sys.argv[1]); held = []; out = []
while len(out) < n:
    p = random.randint(20000, 32000)
    if p in out: continue
    t = socket.socket(); u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try: t.bind(("127.0.0.1", p)); u.bind(("127.0.0.1", p))
    except OSError: t.close(); u.close(); continue
    held += [t, u]; out.append(p)
print(" ".join(map(str, out)))
EOF
}

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

wait_tcp() { # port, pid, log: waits up to 30 s for 127.0.0.1:port to accept
  local port="$1" pid="$2" log="$3"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || die_with_log "process for port $port exited during start-up" "$log"
    "$PYTHON" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' \
      "$port" 2>/dev/null && return 0
    sleep 0.1
  done
  die_with_log "127.0.0.1:$port did not accept within 30 s" "$log"
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

CLK_TCK="$(getconf CLK_TCK)"
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
cpu_pct() { # ticks before, ticks after, seconds -> percent of one core
  awk -v a="$1" -v b="$2" -v hz="$CLK_TCK" -v d="$3" 'BEGIN{printf "%.0f", (b-a)/hz/d*100}'
}

busy_pct() { # share of all CPUs busy over one second, from /proc/stat
  local a b
  a="$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"; sleep 1
  b="$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"
  awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); t=(y[1]-x[1])+(y[2]-x[2]); printf "%.0f", (t > 0 ? 100*(y[1]-x[1])/t : 0)}'
}

# stats "v1 v2 ..." -> "mean min max" (empty input -> "- - -")
stats() {
  awk -v v="$1" 'BEGIN{k=split(v,a," "); if (k == 0) { print "- - -"; exit }
    s=0; lo=a[1]; hi=a[1]; for(i=1;i<=k;i++){s+=a[i]; if(a[i]<lo)lo=a[i]; if(a[i]>hi)hi=a[i]}
    printf "%.4f %.4f %.4f\n", s/k, lo, hi}'
}
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN{ if (a == "" || a == "-" || b == "" || b == "-" || b+0 == 0) print "n/a"; else printf "%.2f", a/b }'; }

# gateway_check BIN CONF SECTION: runs `BIN -t -c CONF`. 0 when the config is accepted. 2 when
# the binary does not know SECTION yet (then GATEWAY_SKIP says so); 1 on any other error
# (GATEWAY_SKIP holds the errors).
export GATEWAY_SKIP=""  # read by the scripts that source this file
gateway_check() {
  local out rc=0
  out="$("$1" -t -c "$2" 2>&1)" || rc=$?
  [ $rc = 0 ] && return 0
  if grep -q "unknown field \`$3\`" <<<"$out"; then
    GATEWAY_SKIP="this gateway binary ($1) does not support [$3] yet (gateway -t: unknown field \`$3\`)"
    return 2
  fi
  GATEWAY_SKIP="the gateway rejected the bench configuration ($2):
$out"
  return 1
}

# build_gateway BIN: builds target/release/gateway when BIN is that path and missing.
build_gateway() {
  local bin="$1"
  [ -x "$bin" ] && return 0
  if [ "$bin" = "$ROOT/target/release/gateway" ]; then
    echo "note: $bin is missing; building it: cargo build --release --bin gateway" >&2
    (cd "$ROOT" && cargo build --release --bin gateway) >&2
  else
    echo "error: GATEWAY_BIN=$bin is not an executable file" >&2
    exit 1
  fi
}
