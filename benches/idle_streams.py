#!/usr/bin/env python3
"""Memory one proxy process spends on idle TCP streams (used by benches/l4.sh).

Opens N TCP connections to 127.0.0.1:PORT (an L4 proxy in front of an HTTP backend), each
sends one HTTP/1.1 GET through the stream and reads the whole response, so that every stream
is established end to end (client to proxy to backend) and has carried bytes both ways, then
stays open and idle. It reads VmRSS of PID before, after SETTLE seconds of holding them and
CLOSE_WAIT seconds after closing them, and prints one line on stdout:

    held=H failed=F before=KiB idle=KiB after=KiB first_error=...

    benches/idle_streams.py --port P --pid PID [--conns N] [--settle S] [--close-wait S]

It reuses the client of benches/idle_memory.py (one process, selectors). stdlib only.
"""

import argparse
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ beside the benches
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idle_memory  # noqa: E402  (the HTTP idle-connection bench next to this file)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="process whose VmRSS is read")
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--close-wait", type=float, default=3.0)
    args = ap.parse_args()

    limit, _hard, note = idle_memory.raise_nofile(args.conns + 256)
    if note:
        idle_memory.log(f"note: {note}")
    n = min(args.conns, max(1, limit - 256))

    warm, wf, _, werr = idle_memory.open_idle(args.port, 64)
    for s in warm:
        s.close()
    if wf:
        raise SystemExit(f"error: warm-up failed on {wf} of 64 connections ({werr})")
    time.sleep(1)
    before = idle_memory.rss_kib(args.pid)
    held, failed, non200, err = idle_memory.open_idle(args.port, n)
    time.sleep(args.settle)
    idle = idle_memory.rss_kib(args.pid)
    dropped = idle_memory.closed_by_peer(held)
    for s in held:
        s.close()
    time.sleep(args.close_wait)
    after = idle_memory.rss_kib(args.pid)
    if non200 and not err:
        err = f"{non200} non-200 responses"
    err = (err or "").replace(" ", "_")
    print(f"held={len(held) - dropped} failed={failed + dropped} before={before} idle={idle} "
          f"after={after} first_error={err or '-'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
