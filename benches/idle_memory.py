#!/usr/bin/env python3
"""Memory each proxy spends on idle keep-alive client connections, and whether it gives it back.

For the gateway (threads = 1), nginx (1 worker) and HAProxy (nbthread 1), one at a time in
the same run, all in front of one nginx backend on 127.0.0.1:
  1. start the proxy, warm it up (64 connections, one request each, closed), read its RSS;
  2. open N HTTP/1.1 keep-alive connections to it, each sends one GET and reads the whole
     response, then stays open and idle; wait SETTLE seconds, read the RSS again and check
     that the proxy has not closed any of them;
  3. close them all, wait CLOSE_WAIT seconds, read the RSS a third time.
RSS is VmRSS from /proc/PID/status: the gateway's and HAProxy's process, nginx's worker
(the master is printed beside it; it does not serve connections).

    benches/idle_memory.py [--conns N] [--proxies gateway,nginx,haproxy] [--rounds R]

--rounds 2 repeats steps 2-3 on the same process: a leak grows again, a cache does not.
Environment: CONNS (default 10000), ROUNDS (1), SETTLE (2), CLOSE_WAIT (3), GATEWAY_BIN (default
target/release/gateway, built if missing), GATEWAY_SERVER_CONF (TOML lines for the gateway's
[server] table; default 'client_idle_timeout = "300s"'), EXTRA_GATEWAY_CONF (TOML appended),
KEEP=1 (keep the temp dir). stdlib only.
"""

import argparse
import errno
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: switchyard-idle-memory\r\n\r\n"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def find_tool(name):
    path = shutil.which(name)
    if path:
        return path
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def free_ports(n):
    held, out = [], []
    while len(out) < n:
        p = random.randint(20000, 32000)
        if p in out:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            s.close()
            continue
        held.append(s)
        out.append(p)
    for s in held:
        s.close()
    return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(d))
    return sorted(out)


class Procs:
    """Processes this script started; every one is ended on the way out."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, logfile):
        out = open(logfile, "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        out.close()
        p.name, p.logfile = name, logfile
        self.procs.append(p)
        return p

    def stop(self, p, timeout=5.0):
        kids = children(p.pid) if p.poll() is None else []
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for k in kids:  # nginx workers, should the master have been killed
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                log(f"warning: stopping {p.name} (pid {p.pid}): {e}")


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def http_status(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return None


def wait_ready(url, proc, want=200, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: {proc.name} exited during start-up (status {proc.returncode})\n"
                             f"--- last lines of {proc.logfile}:\n{tail(proc.logfile)}")
        if http_status(url) == want:
            return
        time.sleep(0.1)
    raise SystemExit(f"error: {url} did not answer {want} within {seconds} s\n"
                     f"--- last lines of {proc.logfile}:\n{tail(proc.logfile)}")


def response_complete(buf):
    """(done, status, keep_alive) for what has been read so far of one response."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False, None, True
    head = buf[:head_end].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split()[1])
    except (IndexError, ValueError):
        return True, None, False
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip().lower()
    keep = "close" not in headers.get("connection", "")
    body = buf[head_end + 4:]
    if "content-length" in headers:
        return len(body) >= int(headers["content-length"]), status, keep
    if "chunked" in headers.get("transfer-encoding", ""):
        return body.endswith(b"0\r\n\r\n"), status, keep
    return False, status, False  # close-delimited: not a keep-alive response


def open_idle(port, n, inflight=256, seconds=120):
    """Open n connections, one request each; return (held sockets, failures, non-200s)."""
    sel = selectors.DefaultSelector()
    held, failed, non200 = [], 0, 0
    started = active = 0
    first_error = None
    deadline = time.monotonic() + seconds

    def fail(s, why):
        nonlocal failed, active, first_error
        failed += 1
        active -= 1
        first_error = first_error or why
        try:
            sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()

    while (started < n or active) and time.monotonic() < deadline:
        while started < n and active < inflight:
            started += 1
            active += 1
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as e:
                failed += 1
                active -= 1
                first_error = first_error or f"socket(): {e}"
                continue
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                failed += 1
                active -= 1
                first_error = first_error or f"connect: {os.strerror(err)}"
                s.close()
                continue
            sel.register(s, selectors.EVENT_WRITE, {"phase": "connect", "buf": b""})
        for key, _ in sel.select(timeout=0.5):
            s, st = key.fileobj, key.data
            if st["phase"] == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(s, f"connect: {os.strerror(err)}")
                    continue
                try:
                    s.send(REQUEST)  # small enough to go in one send on a fresh socket
                except OSError as e:
                    fail(s, f"send: {e}")
                    continue
                st["phase"] = "read"
                sel.modify(s, selectors.EVENT_READ, st)
            else:
                try:
                    data = s.recv(65536)
                except OSError as e:
                    fail(s, f"recv: {e}")
                    continue
                if not data:
                    fail(s, "closed by the proxy before a full response")
                    continue
                st["buf"] += data
                done, status, keep = response_complete(st["buf"])
                if done:
                    sel.unregister(s)
                    active -= 1
                    if status != 200:
                        non200 += 1
                    if keep:
                        held.append(s)
                    else:
                        failed += 1
                        first_error = first_error or "response was not keep-alive"
                        s.close()
                elif status is not None and not keep:
                    fail(s, "response was not keep-alive")
    for key in list(sel.get_map().values()):  # timed out
        fail(key.fileobj, f"no response within {seconds} s")
    sel.close()
    return held, failed, non200, first_error


def closed_by_peer(socks):
    """How many of these idle sockets are readable (EOF or stray data): the proxy closed them."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    n = len(sel.select(timeout=0))
    sel.close()
    return n


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want, hard, None
        except (ValueError, OSError) as e:
            note = f"could not raise the hard limit {hard} to {want} ({e})"
    else:
        note = None
    new = want if hard == resource.RLIM_INFINITY else max(soft, min(want, hard))
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new, hard, note


def nginx_common(prefix):
    return (f"daemon off;\nmaster_process on;\nuser root root;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log warn;\n")


def nginx_http_common(prefix):
    return "\n".join(f"  {d}_temp_path {prefix}/{d};" for d in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")) + (
        "\n  access_log off;\n  keepalive_timeout 300s;\n  keepalive_requests 1000000;\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=int(os.environ.get("CONNS", "10000")),
                    help="idle connections to hold per proxy (default 10000)")
    ap.add_argument("--proxies", default=os.environ.get("PROXIES", "gateway,nginx,haproxy"),
                    help="comma-separated subset of gateway,nginx,haproxy")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", "1")),
                    help="open-hold-close rounds per proxy (default 1); a second round tells memory "
                         "kept for reuse (no new growth) from memory lost (grows again)")
    args = ap.parse_args()
    proxies = [p for p in args.proxies.replace(" ", ",").split(",") if p]
    for p in proxies:
        if p not in ("gateway", "nginx", "haproxy"):
            raise SystemExit(f"error: unknown proxy {p!r} (gateway, nginx, haproxy)")
    rounds = max(1, args.rounds)
    settle = float(os.environ.get("SETTLE", "2"))
    close_wait = float(os.environ.get("CLOSE_WAIT", "3"))

    tools = {}
    missing = []
    for name, pkg in (("nginx", "nginx"), ("haproxy", "haproxy")):
        tools[name] = find_tool(name)
        if not tools[name] and (name == "nginx" or name in proxies):
            missing.append(f"{name} (Debian package {pkg})")
    if missing:
        for m in missing:
            log(f"error: missing tool: {m}")
        log("hint: run .ci/setup (as root) to install what the benches need")
        return 1

    gateway_bin = os.environ.get("GATEWAY_BIN", os.path.join(ROOT, "target/release/gateway"))
    if "gateway" in proxies and not os.access(gateway_bin, os.X_OK):
        if gateway_bin == os.path.join(ROOT, "target/release/gateway"):
            log(f"note: {gateway_bin} is missing; building it: cargo build --release --bin gateway")
            subprocess.run(["cargo", "build", "--release", "--bin", "gateway"], cwd=ROOT,
                           stdout=sys.stderr, check=True)
        else:
            raise SystemExit(f"error: GATEWAY_BIN={gateway_bin} is not an executable file")

    # The client holds n sockets in this one process; the proxies inherit the same limit.
    n = args.conns
    limit, hard, note = raise_nofile(n + 256)
    if note:
        log(f"note: {note}")
    log(f"open files limit (ulimit -n): {limit} (hard limit {hard}); this process and the proxies "
        f"run with it")
    if limit < n + 256:
        n = max(1, limit - 256)
        log(f"note: holding {n} connections instead of {args.conns}: the open files limit allows no more")

    tmp = tempfile.mkdtemp(prefix="switchyard-idle.")
    os.chmod(tmp, 0o755)
    procs = Procs()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    results = []
    try:
        p_backend, p_gw, p_admin, p_nginx, p_haproxy = free_ports(5)

        # backend (1 worker)
        b = os.path.join(tmp, "backend")
        os.makedirs(b)
        with open(f"{b}/nginx.conf", "w") as f:
            f.write(nginx_common(b) + "worker_processes 1;\nevents { worker_connections 4096; }\n"
                    "http {\n" + nginx_http_common(b) +
                    f"  server {{ listen 127.0.0.1:{p_backend} backlog=4096; "
                    "location / { return 200 \"ok\"; } }\n}\n")
        backend = procs.start("backend nginx", [tools["nginx"], "-p", b, "-c", f"{b}/nginx.conf"],
                              f"{b}/stdout.log")
        wait_ready(f"http://127.0.0.1:{p_backend}/", backend)

        log(f"idle memory: {n} idle keep-alive connections per proxy, settle {settle:g} s, "
            f"{close_wait:g} s after closing")
        for name in proxies:
            d = os.path.join(tmp, name)
            os.makedirs(d)
            if name == "gateway":
                server_conf = os.environ.get("GATEWAY_SERVER_CONF", 'client_idle_timeout = "300s"')
                conf = (f'[server]\nthreads = 1\naccess_log = "off"\n{server_conf}\n\n'
                        f'[admin]\naddr = "127.0.0.1:{p_admin}"\n\n'
                        f'[[listener]]\nname = "http"\naddr = "127.0.0.1:{p_gw}"\n\n'
                        '[[route]]\nname = "all"\npath_prefix = "/"\nupstream = "backend"\n\n'
                        '[[upstream]]\nname = "backend"\nalgorithm = "round-robin"\n'
                        f'backends = [ {{ addr = "127.0.0.1:{p_backend}" }} ]\n'
                        f'{os.environ.get("EXTRA_GATEWAY_CONF", "")}\n')
                with open(f"{d}/gateway.toml", "w") as f:
                    f.write(conf)
                proc = procs.start("gateway", [gateway_bin, "-c", f"{d}/gateway.toml"], f"{d}/gateway.log")
                wait_ready(f"http://127.0.0.1:{p_admin}/health/ready", proc)
                port = p_gw
            elif name == "nginx":
                with open(f"{d}/nginx.conf", "w") as f:
                    f.write(nginx_common(d) + "worker_processes 1;\n"
                            f"events {{ worker_connections {n + 1024}; }}\n"
                            "http {\n" + nginx_http_common(d) +
                            f"  upstream backend {{ server 127.0.0.1:{p_backend}; keepalive 64; "
                            "keepalive_requests 1000000; keepalive_timeout 300s; }\n"
                            f"  server {{ listen 127.0.0.1:{p_nginx} backlog=4096;\n"
                            "    location / { proxy_pass http://backend; proxy_http_version 1.1; "
                            "proxy_set_header Connection \"\"; }\n  }\n}\n")
                proc = procs.start("nginx", [tools["nginx"], "-p", d, "-c", f"{d}/nginx.conf"],
                                   f"{d}/stdout.log")
                proc.logfile = f"{d}/error.log"
                port = p_nginx
            else:
                maxconn = n + 1024
                with open(f"{d}/haproxy.cfg", "w") as f:
                    f.write(f"global\n  nbthread 1\n  maxconn {maxconn}\n  no strict-limits\n"
                            f"defaults\n  mode http\n  maxconn {maxconn}\n  option http-keep-alive\n"
                            "  http-reuse always\n  timeout connect 5s\n  timeout client 300s\n"
                            "  timeout server 300s\n  timeout http-keep-alive 300s\n"
                            f"frontend fe\n  bind 127.0.0.1:{p_haproxy}\n  default_backend be\n"
                            f"backend be\n  server s1 127.0.0.1:{p_backend}\n")
                proc = procs.start("haproxy", [tools["haproxy"], "-db", "-f", f"{d}/haproxy.cfg"],
                                   f"{d}/haproxy.log")
                port = p_haproxy
            wait_ready(f"http://127.0.0.1:{port}/", proc)

            master_rss = None
            pid = proc.pid
            if name == "nginx":
                workers = children(proc.pid)
                if len(workers) != 1:
                    raise SystemExit(f"error: expected 1 nginx worker, found {workers}")
                pid = workers[0]

            warm, wf, _, werr = open_idle(port, 64)
            for s in warm:
                s.close()
            if wf:
                raise SystemExit(f"error: {name}: warm-up failed on {wf} of 64 connections ({werr})")
            time.sleep(1)
            before = rss_kib(pid)
            if name == "nginx":
                master_rss = rss_kib(proc.pid)

            for rnd in range(1, rounds + 1):
                t0 = time.monotonic()
                held, failed, non200, err = open_idle(port, n)
                opened_s = time.monotonic() - t0
                time.sleep(settle)
                if proc.poll() is not None:
                    raise SystemExit(f"error: {name} exited while holding connections\n{tail(proc.logfile)}")
                idle = rss_kib(pid)
                dropped = closed_by_peer(held)
                tag = f"{name} round {rnd}" if rounds > 1 else name
                log(f"  {tag}: held {len(held)} of {n} (failed {failed}{': ' + err if err else ''}; "
                    f"non-200 {non200}; opened in {opened_s:.1f} s; closed by the proxy while idle: {dropped}); "
                    f"RSS {before} -> {idle} KiB")
                for s in held:
                    s.close()
                time.sleep(close_wait)
                after = rss_kib(pid)
                results.append({
                    "name": name, "round": rnd, "pid": pid, "held": len(held) - dropped,
                    "failed": failed + dropped, "before": before, "idle": idle, "after": after,
                    "master": master_rss,
                })
                log(f"  {tag}: RSS {close_wait:g} s after closing them: {after} KiB")
                before = after
            procs.stop(proc)
    finally:
        procs.stop_all()
        if os.environ.get("KEEP") == "1":
            log(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"== idle memory: {n} idle HTTP/1.1 keep-alive connections per proxy "
          f"(RSS in KiB; settle {settle:g} s; 'after close' = {close_wait:g} s after closing all) ==")
    print(f"{'proxy':<16} {'held':>6} {'RSS before':>11} {'RSS idle':>10} {'KiB/conn':>9} "
          f"{'after close':>12} {'returned':>9}")
    for r in results:
        grew = r["idle"] - r["before"]
        per = grew / r["held"] if r["held"] else float("nan")
        returned = (f"{100 * (r['idle'] - r['after']) / grew:.0f}%"
                    if grew > max(256, r["before"] // 100) else "n/a")  # no growth to speak of
        label = r["name"] + (" (worker)" if r["name"] == "nginx" else "")
        if rounds > 1:
            label += f" #{r['round']}"
        print(f"{label:<16} {r['held']:>6} {r['before']:>11} {r['idle']:>10} {per:>9.2f} "
              f"{r['after']:>12} {returned:>9}")
    for r in results:
        if r["master"] is not None and r["round"] == 1:
            print(f"(nginx master RSS {r['master']} KiB, not counted: it serves no connection)")
        if r["failed"]:
            print(f"(warning: {r['name']}: {r['failed']} connections failed or were closed by the proxy; "
                  "KiB/conn is over the ones held)")
    print("(returned: share of the growth given back after closing; allocators may keep freed memory)")
    if rounds > 1:
        print("(#2 and later start from the previous round's 'after close': no new growth there means the "
              "memory kept was reused; growth again means it was lost)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
