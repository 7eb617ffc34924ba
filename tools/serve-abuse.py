#!/usr/bin/env python3
"""Load and abuse a running `freshrec serve` from loopback, and report what it did.

While one well-behaved client keeps sending good requests, the script tries what a hostile or broken
client would: slow clients that send a header a byte at a time, bodies over the limit (by
Content-Length, chunked, compressed), malformed requests and JSON, a burst of connections and a
burst of requests. It prints a line for each probe and exits 1 when a good request failed (no
answer, or an answer other than 200 or a 503 with Retry-After, which it retries as a client should),
when a probe got a 5xx other than 503, or when the server stopped answering. Standard library only;
every socket has a deadline, and a run still probing 30 s after --seconds (a server that stalls its
clients) ends there, failed.

    python3 tools/serve-abuse.py --port 8080 --seconds 20 --history 12,45,7
"""
import argparse
import gzip
import http.client
import ipaddress
import json
import os
import socket
import statistics
import sys
import threading
import time

TIMEOUT = 10.0  # seconds, any single socket operation


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="loopback address of the server (others are refused)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=20.0, help="bound on the whole run (at least 10)")
    p.add_argument("--history", default="", help="item ids the model knows, for the good requests (default: an empty history)")
    p.add_argument("--token-file", help="bearer token file, as given to serve --token-file")
    p.add_argument("--max-body-bytes", type=int, default=4 << 20, help="the server's body limit")
    p.add_argument("--slow", type=int, default=32, help="slow clients")
    p.add_argument("--burst-connections", type=int, default=300)
    p.add_argument("--burst-clients", type=int, default=32, help="clients of the request burst")
    a = p.parse_args()
    if not ipaddress.ip_address(socket.gethostbyname(a.host)).is_loopback:
        p.error(f"--host {a.host} is not a loopback address: this script only probes a server on this machine")
    a.seconds = max(a.seconds, 10.0)
    return a


class Report:
    def __init__(self):
        self.lock = threading.Lock()
        self.problems = []

    def line(self, name, text, ok=True):
        with self.lock:
            print(f"{'ok  ' if ok else 'FAIL'} {name:<22} {text}", flush=True)
            if not ok:
                self.problems.append(name)


def raw(args):
    s = socket.create_connection((args.host, args.port), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def read_status(s):
    """The status of the first response on the socket, or None when it closed without one."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    if not data.startswith(b"HTTP/1."):
        return None
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def good_client(args, stop, stats):
    """Good requests without pause on a kept-alive connection; 503 with Retry-After is retried."""
    body = json.dumps({"history": args.ids, "k": 5})
    conn = None
    while not stop.is_set():
        began = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(args.host, args.port, timeout=TIMEOUT)
            conn.request("POST", "/recommend", body, {"Content-Type": "application/json", **args.auth})
            r = conn.getresponse()
            payload = r.read()
            if r.status == 200 and "items" in json.loads(payload):
                stats["ok"] += 1
                stats["latency"].append(time.monotonic() - began)
            elif r.status == 503 and r.getheader("Retry-After"):
                stats["busy"] += 1
                conn.close()
                conn = None
                time.sleep(0.05)
            else:
                stats["failed"] += 1
                stats["why"].append(f"status {r.status}: {payload[:120]!r}")
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException, ValueError) as e:
            stats["failed"] += 1
            stats["why"].append(f"{type(e).__name__}: {e}")
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)


def slow_clients(args, report, deadline):
    """Each sends a request header one byte a second; the server must close them all."""
    header = b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 4000
    opened, closed_after = [], []

    def one():
        try:
            s = raw(args)
        except OSError:
            return
        s.settimeout(1.0)
        opened.append(1)
        start = time.monotonic()
        i = 0
        while time.monotonic() < deadline:
            try:
                s.send(header[i % len(header):i % len(header) + 1])
                i += 1
                s.recv(1)  # an answer or the end of the stream: the server let go
                closed_after.append(time.monotonic() - start)
                break
            except socket.timeout:
                continue  # still waiting: the next byte
            except OSError:
                closed_after.append(time.monotonic() - start)
                break
        s.close()

    threads = [threading.Thread(target=one, daemon=True) for _ in range(args.slow)]
    for t in threads:
        t.start()
    return threads, opened, closed_after


def probe_bodies(args, report):
    limit = args.max_body_bytes
    # Content-Length over the limit: refused before the body is sent.
    s = raw(args)
    s.sendall(f"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: {limit * 10}\r\n\r\n".encode())
    status = read_status(s)
    s.close()
    report.line("content-length", f"{limit * 10} bytes announced -> {status}", status == 413)

    # Chunked, twice the limit: the server must stop reading near the limit.
    s = raw(args)
    s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    sent = 0
    try:
        while sent < 2 * limit:
            s.sendall(chunk)
            sent += 0x10000
        s.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    status = read_status(s)
    s.close()
    report.line("chunked body", f"{sent} of {2 * limit} bytes taken -> {status if status else 'closed'}",
                status in (413, None) and (status == 413 or sent < 2 * limit))

    # A gzip body that inflates 1000-fold.
    bomb = gzip.compress(b" " * (limit * 4))
    s = raw(args)
    s.sendall(f"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
              f"Content-Length: {len(bomb)}\r\n\r\n".encode() + bomb)
    status = read_status(s)
    s.close()
    report.line("compressed body", f"{len(bomb)} bytes of gzip inflating to {limit * 4} -> {status}", status in (413, 415))


def probe_malformed(args, report):
    cases = [
        ("bad JSON", b'{"history": [1, 2', 400),
        ("not an object", b"[1, 2, 3]", 400),
        ("unknown id", b'{"history": ["no-such-item-\\u00e9"]}', 400),
        ("huge k", b'{"history": [], "k": 100000000000000000000}', 400),
        ("bytes not UTF-8", b'{"history": ["\xff\xfe"]}', 400),
        ("deep nesting", b"[" * 100000 + b"]" * 100000, 400),
    ]
    for name, body, want in cases:
        s = raw(args)
        auth = "".join(f"{k}: {v}\r\n" for k, v in args.auth.items())
        s.sendall(f"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        status = read_status(s)
        s.close()
        report.line(name, f"-> {status}", status is not None and 400 <= status < 500)
    for name, request, ok in [
        ("huge header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * 65536 + b"\r\n\r\n", {431, 400}),
        ("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n", {400, None}),
        ("bad request line", b"GET\r\n\r\n", {400}),
    ]:
        s = raw(args)
        s.sendall(request)
        status = read_status(s)
        s.close()
        report.line(name, f"-> {status if status else 'closed'}", status in ok)


def burst_connections(args, report):
    """Many connections at once, held idle for two seconds."""
    socks, refused = [], 0
    for _ in range(args.burst_connections):
        try:
            socks.append(raw(args))
        except OSError:
            refused += 1
    time.sleep(2.0)
    busy = 0
    for s in socks:
        s.settimeout(0.2)
        try:
            data = s.recv(64)
            busy += data.startswith(b"HTTP/1.1 503")
        except OSError:
            pass
        s.close()
    report.line("connection burst", f"{len(socks)} opened ({refused} not connected), {busy} answered 503 and closed")


def burst_requests(args, report, seconds):
    """Clients sending as fast as they can: every request gets an answer (200, or 503 at once)."""
    counts = {"200": 0, "503": 0, "other": 0, "error": 0}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    body = json.dumps({"histories": [args.ids] * 64, "k": 10})

    def one():
        conn = http.client.HTTPConnection(args.host, args.port, timeout=TIMEOUT)
        while time.monotonic() < stop_at:
            try:
                conn.request("POST", "/recommend", body, {"Content-Type": "application/json", **args.auth})
                r = conn.getresponse()
                r.read()
                key = str(r.status) if r.status in (200, 503) else "other"
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                key = "error"
                conn.close()
            with lock:
                counts[key] += 1

    threads = [threading.Thread(target=one, daemon=True) for _ in range(args.burst_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 2 * TIMEOUT)
    report.line("request burst", f"{args.burst_clients} clients x {seconds:.0f} s, batches of 64: "
                f"{counts['200']} answered, {counts['503']} refused busy, {counts['other']} other, {counts['error']} errors",
                counts["other"] == 0 and counts["error"] == 0)


def main():
    args = parse_args()
    result = []
    runner = threading.Thread(target=lambda: result.append(run(args)), daemon=True)
    runner.start()
    runner.join(args.seconds + 30)
    if not result:
        print(f"FAIL whole run             still probing {args.seconds + 30:.0f} s after the start: the server "
              "stalls its clients", flush=True)
        os._exit(1)
    sys.exit(result[0])


def run(args):
    args.ids = [int(x) if x.strip().isdigit() else x.strip() for x in args.history.split(",") if x.strip()]
    args.auth = {}
    if args.token_file:
        with open(args.token_file) as f:
            args.auth = {"Authorization": "Bearer " + f.readline().strip()}
    report = Report()
    began = time.monotonic()
    deadline = began + args.seconds
    try:
        http.client.HTTPConnection(args.host, args.port, timeout=TIMEOUT).request("GET", "/healthz")
    except OSError as e:
        print(f"serve-abuse: no server at {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2

    stop = threading.Event()
    stats = {"ok": 0, "busy": 0, "failed": 0, "why": [], "latency": []}
    good = threading.Thread(target=good_client, args=(args, stop, stats), daemon=True)
    good.start()
    slow_threads, opened, closed_after = slow_clients(args, report, deadline)
    probe_bodies(args, report)
    probe_malformed(args, report)
    burst_connections(args, report)
    burst_requests(args, report, min(5.0, max(1.0, deadline - time.monotonic() - 3)))
    for t in slow_threads:
        t.join(max(0.0, deadline - time.monotonic()))
    report.line("slow clients", f"{len(opened)} opened, {len(closed_after)} closed by the server"
                + (f" after {statistics.median(closed_after):.1f} s (median), {max(closed_after):.1f} s at most"
                   if closed_after else ""), len(closed_after) == len(opened))
    stop.set()
    good.join(2 * TIMEOUT)

    lat = sorted(stats["latency"])
    p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
    report.line("good requests", f"{stats['ok']} answered (p50 {p50:.1f} ms, p99 {p99:.1f} ms), "
                f"{stats['busy']} retried after 503, {stats['failed']} failed"
                + (f": {stats['why'][:3]}" if stats["why"] else ""), stats["failed"] == 0 and stats["ok"] > 0)
    try:
        conn = http.client.HTTPConnection(args.host, args.port, timeout=TIMEOUT)
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    except OSError as e:
        status = f"no answer ({e})"
    report.line("still serving", f"/healthz -> {status}", status == 200)
    print(f"{'passed' if not report.problems else 'FAILED: ' + ', '.join(report.problems)} "
          f"in {time.monotonic() - began:.1f} s")
    return 1 if report.problems else 0


if __name__ == "__main__":
    main()
