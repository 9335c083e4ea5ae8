#!/usr/bin/env python3
"""Hostile-input table: sends the same malformed requests to several HTTP proxies and shows
what each answered and what reached its backend.

Run by benches/hostile.sh, which starts the proxies; this script starts one recording
backend per proxy (a small HTTP/1.1 server that logs every request it parsed, and any
bytes it could not parse) on the ports given, then sends each case on a fresh connection
to each proxy and prints the table.

    hostile.py --target gateway:PROXY_PORT:BACKEND_PORT --target nginx:... [--markdown]

Python standard library only.
"""

import argparse
import re
import socket
import sys
import threading
import time

HOST = "h.test"
MAX_HEAD = 8192  # the head limit every proxy is configured with (bytes)


# ---------------------------------------------------------------- the cases
def cases():
    """(id, description, raw bytes) of every case, in table order."""
    h = HOST
    big = "a" * (MAX_HEAD + 1024)
    c = []

    def add(cid, desc, raw):
        c.append((cid, desc, raw if isinstance(raw, bytes) else raw.encode("latin-1")))

    add("baseline", "a plain GET (control row)", f"GET /ok HTTP/1.1\r\nHost: {h}\r\n\r\n")
    # request smuggling: framing
    add("cl-te", "Content-Length then Transfer-Encoding: chunked",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5c\r\nGET /smuggled HTTP/1.1\r\nHost: h.test\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n")
    add("te-cl", "Transfer-Encoding: chunked then Content-Length",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n"
        "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h.test\r\n\r\n")
    add("cl-cl-diff", "two different Content-Length headers",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\n"
        "helloGET /smuggled HTTP/1.1\r\nHost: h.test\r\n\r\n")
    add("cl-cl-same", "the same Content-Length twice",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
    add("cl-list", "Content-Length: 5, 5 (a list)",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5, 5\r\n\r\nhello")
    add("cl-plus", "Content-Length: +5",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nContent-Length: +5\r\n\r\nhello")
    add("cl-neg", "Content-Length: -1",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nContent-Length: -1\r\n\r\n")
    add("cl-hex", "Content-Length: 0x5",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0x5\r\n\r\nhello")
    add("cl-huge", "Content-Length: 99999999999999999999 (overflows 64 bits)",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nContent-Length: 99999999999999999999\r\n\r\nhello")
    add("te-chunked-identity", "Transfer-Encoding: chunked, identity",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n")
    add("te-identity-chunked", "Transfer-Encoding: identity, chunked",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n")
    add("te-space-colon", "'Transfer-Encoding : chunked' (space before the colon)",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n")
    add("te-tab", "Transfer-Encoding:\\tchunked",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n")
    add("te-xchunked", "Transfer-Encoding: xchunked",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n")
    add("te-chunked-twice", "Transfer-Encoding: chunked, chunked",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n")
    add("te-two-headers", "Transfer-Encoding: chunked and Transfer-Encoding: gzip",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n")
    add("te-http10", "Transfer-Encoding: chunked in HTTP/1.0",
        f"POST /s HTTP/1.0\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    add("te-get", "Transfer-Encoding: chunked on a GET",
        f"GET /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    add("te-vtab", "Transfer-Encoding:\\x0bchunked (vertical tab)",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n")
    # chunked bodies
    add("chunk-bad-hex", "chunk size 'zz'",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    add("chunk-neg", "chunk size '-5'",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n")
    add("chunk-0x", "chunk size '0x5'",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n")
    add("chunk-overflow", "chunk size of 17 hex digits (overflows)",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n")
    add("chunk-ext", "chunk extension '5;name=val' (valid)",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n5;name=val\r\nhello\r\n0\r\n\r\n")
    add("chunk-ext-bad", "chunk extension with a bare LF inside",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n")
    add("chunk-space", "chunk size '5 ' (trailing space)",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n")
    add("chunk-no-crlf", "chunk data not followed by CRLF",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n")
    add("chunk-lf-only", "chunked body with bare LF line endings",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n")
    add("chunk-no-final-crlf", "last chunk without the final CRLF (then idle)",
        f"POST /s HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
    # head syntax
    add("obs-fold", "obs-fold header continuation",
        f"GET /f HTTP/1.1\r\nHost: {h}\r\nX-A: 1\r\n folded\r\n\r\n")
    add("obs-fold-te", "obs-fold of Transfer-Encoding",
        f"POST /f HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n")
    add("space-before-colon", "header name with a space before the colon",
        f"GET /f HTTP/1.1\r\nHost: {h}\r\nX-A : 1\r\n\r\n")
    add("space-in-name", "header name with a space inside",
        f"GET /f HTTP/1.1\r\nHost: {h}\r\nX A: 1\r\n\r\n")
    add("no-colon", "header line without a colon",
        f"GET /f HTTP/1.1\r\nHost: {h}\r\nNoColonHere\r\n\r\n")
    add("nul-name", "NUL in a header name",
        f"GET /f HTTP/1.1\r\nHost: {h}\r\nX-\x00A: 1\r\n\r\n")
    add("nul-value", "NUL in a header value",
        f"GET /f HTTP/1.1\r\nHost: {h}\r\nX-A: a\x00b\r\n\r\n")
    add("ctl-value", "control byte 0x01 in a header value",
        f"GET /f HTTP/1.1\r\nHost: {h}\r\nX-A: a\x01b\r\n\r\n")
    add("cr-value", "bare CR inside a header value",
        f"GET /f HTTP/1.1\r\nHost: {h}\r\nX-A: a\rX-B: b\r\n\r\n")
    add("del-value", "DEL (0x7f) in a header value",
        f"GET /f HTTP/1.1\r\nHost: {h}\r\nX-A: a\x7fb\r\n\r\n")
    add("nul-target", "NUL in the request target",
        f"GET /a\x00b HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("ctl-target", "control byte 0x01 in the request target",
        f"GET /a\x01b HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("space-target", "space inside the request target",
        f"GET /a b HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("bare-lf", "bare LF line endings in the head",
        f"GET /lf HTTP/1.1\nHost: {h}\n\n")
    add("bare-cr", "bare CR line endings in the head",
        f"GET /cr HTTP/1.1\rHost: {h}\r\r")
    add("oversize-head", f"a {len(big) // 1024} KiB header (over the {MAX_HEAD // 1024} KiB limit)",
        f"GET /big HTTP/1.1\r\nHost: {h}\r\nX-Big: {big}\r\n\r\n")
    add("many-headers", "200 small headers (under the byte limit)",
        f"GET /many HTTP/1.1\r\nHost: {h}\r\n" + "".join(f"X-{i}: v\r\n" for i in range(200)) + "\r\n")
    # Host
    add("no-host-11", "HTTP/1.1 without Host", "GET /nh HTTP/1.1\r\n\r\n")
    add("no-host-10", "HTTP/1.0 without Host", "GET /nh HTTP/1.0\r\n\r\n")
    add("host-empty", "empty Host on HTTP/1.1", "GET /h HTTP/1.1\r\nHost:\r\n\r\n")
    add("host-space", "Host with a space inside", "GET /h HTTP/1.1\r\nHost: h.test evil.test\r\n\r\n")
    add("host-at", "Host with userinfo '@'", "GET /h HTTP/1.1\r\nHost: user@h.test\r\n\r\n")
    add("host-ports", "Host with two ports", "GET /h HTTP/1.1\r\nHost: h.test:80:81\r\n\r\n")
    add("host-slash", "Host with a path '/'", "GET /h HTTP/1.1\r\nHost: h.test/evil\r\n\r\n")
    add("host-dup", "two Host headers (different)",
        f"GET /h HTTP/1.1\r\nHost: {h}\r\nHost: evil.test\r\n\r\n")
    add("host-dup-same", "two Host headers (same)",
        f"GET /h HTTP/1.1\r\nHost: {h}\r\nHost: {h}\r\n\r\n")
    add("abs-match", "absolute-form URI, same host as Host",
        f"GET http://{h}/abs HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("abs-mismatch", "absolute-form URI, other host than Host",
        f"GET http://evil.test/abs HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("abs-no-host", "absolute-form URI, no Host",
        f"GET http://{h}/abs HTTP/1.1\r\n\r\n")
    add("abs-https", "absolute-form https URI",
        f"GET https://{h}/abs HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("abs-bad-scheme", "absolute-form with scheme 'gopher'",
        f"GET gopher://{h}/abs HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("authority-get", "authority-form target on a GET",
        f"GET {h}:80 HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("asterisk-get", "asterisk-form target on a GET", f"GET * HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("connect", "CONNECT to another host",
        f"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n")
    # paths
    add("path-pct00", "%00 in the path", f"GET /a%00b HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-dotdot", "'/../' in the path", f"GET /a/../b HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-dotdot-root", "'/../' above the root", f"GET /../etc/passwd HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-pct2e", "'%2e%2e' segment in the path",
        f"GET /a/%2e%2e/b HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-pct2e-root", "'%2e%2e' above the root",
        f"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-pct2f", "'..%2f' (encoded slash)", f"GET /a/..%2fb HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-backslash", "'\\..\\' in the path", f"GET /a\\..\\b HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-dot", "'/./' in the path", f"GET /a/./b HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-no-slash", "origin-form without the leading '/'", f"GET a/b HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-bad-pct", "malformed percent escape '%zz'", f"GET /a%zz HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("path-fragment", "'#' fragment in the target", f"GET /a#frag HTTP/1.1\r\nHost: {h}\r\n\r\n")
    # methods and versions
    add("method-lower", "lowercase method 'get'", f"get /m HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("method-badchar", "method with a non-token char 'GE(T'", f"GE(T /m HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("method-unknown", "unknown token method 'FOO'", f"FOO /m HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("method-long", "a 10 000-byte method", "G" * 10000 + f" /m HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("uri-long", "a 10 000-byte URI (over the limit)",
        "GET /" + "u" * 10000 + f" HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("uri-long-fits", "a 6 000-byte URI (under the limit)",
        "GET /" + "u" * 6000 + f" HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("http09", "HTTP/0.9 request 'GET /'", "GET /\r\n")
    add("version-12", "HTTP/1.2", f"GET /v HTTP/1.2\r\nHost: {h}\r\n\r\n")
    add("version-2", "HTTP/2.0 on an HTTP/1 connection", f"GET /v HTTP/2.0\r\nHost: {h}\r\n\r\n")
    add("version-lower", "lowercase 'http/1.1'", f"GET /v http/1.1\r\nHost: {h}\r\n\r\n")
    add("version-junk", "version 'HTTP/1.1x'", f"GET /v HTTP/1.1x\r\nHost: {h}\r\n\r\n")
    add("version-missing-space", "two spaces in the request line", f"GET  /v HTTP/1.1\r\nHost: {h}\r\n\r\n")
    add("garbage", "not HTTP at all", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 hello\r\n\r\n")
    return c


# ---------------------------------------------------------------- recording backend
class Recorder:
    """A tiny HTTP/1.1 origin that records every request it parsed."""

    def __init__(self, port):
        self.port = port
        self.lock = threading.Lock()
        self.log = []  # (time, summary)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()

    def mark(self):
        with self.lock:
            return len(self.log)

    def since(self, mark):
        with self.lock:
            return list(self.log[mark:])

    def _record(self, what):
        with self.lock:
            self.log.append(what)

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(30)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
                    d = conn.recv(65536)
                    if not d:
                        if buf.strip():
                            self._record("unparsed bytes " + short(buf))
                        return
                    buf += d
                end = head_end(buf)
                head, buf = buf[:end], buf[end:]
                lines = re.split(rb"\r?\n", head.rstrip(b"\r\n"))
                reqline = lines[0]
                hdrs = []
                for ln in lines[1:]:
                    k, _, v = ln.partition(b":")
                    hdrs.append((k.strip().lower(), v.strip()))
                te = [v for k, v in hdrs if k == b"transfer-encoding"]
                cl = [v for k, v in hdrs if k == b"content-length"]
                body = b""
                if te:
                    body, buf, ok = read_chunked(conn, buf)
                    if not ok:
                        self._record(summary(reqline, hdrs, body) + " [bad chunked body]")
                        return
                elif cl:
                    try:
                        n = int(cl[0])
                    except ValueError:
                        self._record(summary(reqline, hdrs, b"") + " [bad Content-Length]")
                        return
                    while len(buf) < n:
                        d = conn.recv(65536)
                        if not d:
                            break
                        buf += d
                    body, buf = buf[:n], buf[n:]
                self._record(summary(reqline, hdrs, body))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
        except OSError:
            return
        finally:
            conn.close()


def head_end(buf):
    a, b = buf.find(b"\r\n\r\n"), buf.find(b"\n\n")
    ends = [x + 4 for x in [a] if x >= 0] + [x + 2 for x in [b] if x >= 0]
    return min(ends)


def read_chunked(conn, buf):
    body = b""
    while True:
        while b"\n" not in buf:
            d = conn.recv(65536)
            if not d:
                return body, buf, False
            buf += d
        line, _, buf = buf.partition(b"\n")
        size = line.split(b";")[0].strip()
        try:
            n = int(size, 16)
        except ValueError:
            return body, buf, False
        if n == 0:
            while b"\n" not in buf:  # trailers: read to the empty line
                d = conn.recv(65536)
                if not d:
                    return body, buf, True
                buf += d
            while True:
                line, _, buf = buf.partition(b"\n")
                if line.strip() == b"":
                    return body, buf, True
                while b"\n" not in buf:
                    d = conn.recv(65536)
                    if not d:
                        return body, buf, True
                    buf += d
        while len(buf) < n + 2:
            d = conn.recv(65536)
            if not d:
                return body, buf, False
            buf += d
        body += buf[:n]
        buf = buf[n:].lstrip(b"\r")
        if buf.startswith(b"\n"):
            buf = buf[1:]


INTERESTING = (b"host", b"content-length", b"transfer-encoding", b"x-a", b"x-b", b"x-")


def short(b, n=60):
    s = b.decode("latin-1")
    s = "".join(ch if 32 <= ord(ch) < 127 and ch != "|" else "\\x%02x" % ord(ch) for ch in s)
    return s if len(s) <= n else s[: n - 3] + "..."


def summary(reqline, hdrs, body):
    out = short(reqline, 70)
    extra = []
    for k, v in hdrs:
        if k in (b"host", b"content-length", b"transfer-encoding") or (
            k.startswith(b"x-") and not k.startswith(b"x-forwarded") and k not in (b"x-request-id", b"x-real-ip")
            and not re.match(rb"x-\d+$", k) and k != b"x-big"
        ):
            extra.append(short(k + b": " + v, 40))
    nums = [k for k, _ in hdrs if re.match(rb"x-\d+$", k)]
    if nums:
        extra.append(f"{len(nums)} x-N headers")
    if any(k == b"x-big" for k, _ in hdrs):
        extra.append("X-Big")
    if body:
        extra.append("body " + repr(short(body, 30)))
    return out + ("; " + ", ".join(extra) if extra else "")


# ---------------------------------------------------------------- the client
def status_of(resp):
    """Statuses of the responses in `resp` (a list), best effort."""
    out = []
    rest = resp
    while rest:
        m = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})", rest)
        if not m:
            if not out:
                out.append("junk:" + short(rest, 12))
            break
        out.append(m.group(1).decode())
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            break
        head = rest[:end].lower()
        rest = rest[end + 4:]
        cl = re.search(rb"\ncontent-length:\s*(\d+)", head)
        if cl:
            rest = rest[int(cl.group(1)):]
        elif b"transfer-encoding: chunked" in head:
            z = rest.find(b"\r\n0\r\n\r\n")
            rest = rest[z + 7:] if z >= 0 else b""
        else:
            break
    return out


def send_case(port, raw, wait):
    """Send raw on a new connection; returns (statuses, how it ended)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    got = b""
    ended = "open"
    try:
        s.sendall(raw)
    except OSError:
        ended = "reset"
    deadline = time.monotonic() + wait
    quiet_since = None
    while ended == "open":
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if got and quiet_since and time.monotonic() - quiet_since > 0.5:
            break  # a response and then half a second of silence: it keeps the connection
        s.settimeout(min(left, 0.25))
        try:
            d = s.recv(65536)
        except socket.timeout:
            if got and quiet_since is None:
                quiet_since = time.monotonic()
            continue
        except OSError:
            ended = "reset"
            break
        if not d:
            ended = "closed"
            break
        got += d
        quiet_since = None
    s.close()
    return status_of(got), ended


def cell(statuses, ended):
    if not statuses:
        return {"closed": "closed", "reset": "reset", "open": "no answer"}[ended]
    a = "+".join(statuses)
    return a + (", closed" if ended in ("closed", "reset") else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", required=True, help="name:proxy_port:backend_port")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--wait", type=float, default=2.0, help="seconds to wait for an answer")
    ap.add_argument("--only", default="", help="comma-separated case ids")
    ap.add_argument("--ready-timeout", type=float, default=30)
    a = ap.parse_args()
    targets = []
    for t in a.target:
        name, pp, bp = t.split(":")
        targets.append((name, int(pp), Recorder(int(bp))))
    # every proxy answers a good request through its backend before the cases start
    for name, port, rec in targets:
        deadline = time.monotonic() + a.ready_timeout
        while True:
            try:
                st, _ = send_case(port, f"GET /ready HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(), 2)
                if st == ["200"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"error: {name} on 127.0.0.1:{port} did not answer 200 through its backend")
            time.sleep(0.2)
    only = set(filter(None, a.only.split(",")))
    rows = []
    for cid, desc, raw in cases():
        if only and cid not in only:
            continue
        row = [cid, desc]
        for name, port, rec in targets:
            m = rec.mark()
            st, ended = send_case(port, raw, a.wait)
            time.sleep(0.3)  # what the proxy forwards arrives well before this
            seen = rec.since(m)
            row.append((cell(st, ended), seen))
        rows.append(row)
        print(f"  {cid}: " + "  ".join(f"{t[0]}={c[0]}/{len(c[1])}" for t, c in zip(targets, row[2:])),
              file=sys.stderr)
    names = [t[0] for t in targets]
    if a.markdown:
        print("| case | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for r in rows:
            cells = []
            for ans, seen in r[2:]:
                cells.append(ans + (" → " + "<br>".join(f"`{x}`" for x in seen) if seen else " · nothing sent"))
            print(f"| {r[0]}: {r[1].replace('|', '/')} | " + " | ".join(cells) + " |")
    else:
        w = max(len(r[0]) for r in rows)
        print(f"{'case':<{w}}  " + "  ".join(f"{n:<22}" for n in names))
        for r in rows:
            print(f"{r[0]:<{w}}  " + "  ".join(f"{(ans + ' / ' + (str(len(seen)) + ' up' if seen else '-')):<22}"
                                               for ans, seen in r[2:]))
        print("\n(answer / requests that reached the backend; 'closed' = closed without an answer,"
              " 'no answer' = still open after the wait)")
        print("\nwhat reached the backends:")
        for r in rows:
            for n, (ans, seen) in zip(names, r[2:]):
                for x in seen:
                    print(f"  {r[0]:<{w}} {n:<8} {x}")


if __name__ == "__main__":
    main()
