#!/usr/bin/env python3
"""Load test of `simlm-search serve` on loopback, beside the batch mode on the same queries, in one run.

  batch    `simlm-search batch --queries Q` (the same binary, the same threads): queries/s, encode + search;
  one      `simlm-search query` on one query: the encode + search milliseconds it reports (its latency floor);
  serve    the service started on a free loopback port; `wrk` (a native load generator: one thread, N
           keep-alive connections, a Lua script posting the queries in turn, k 10, the index's default mode,
           no passage text) at concurrency 1, 8 and 64: queries/s and p50 / p99 latency, and the CPU seconds
           the server took a second (wrk shares the machine's cores);
  faults   while 8 good clients run: clients that send half a request and disconnect, slow clients that
           send their request 8 bytes every 20 ms, and a burst of malformed requests (bad JSON, unknown fields, k 0, empty
           queries, over-long bodies). Every good answer is checked against the service's own answer for
           that query when it ran alone; every bad request must get its 4xx; the server's RSS is read from
           /proc before and after.

Bounded: --seconds per concurrency level (default 10), --requests at most per level; loopback only.

The fault run keeps Python clients (it checks every answer). wrk is a Debian package (`apt-get install
wrk`); --load python uses the Python clients for the levels too (they take CPU from the server: on a
few cores that measures the client).

usage: scripts/bench/bench_serve.py --index target/repro/pool --queries queries.dev.small.tsv [--threads 2]
"""
import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from scale.common import cpu_level, engine_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def read_queries(path, n):
    out = []
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if "\t" in line:
                qid, text = line.rstrip("\n").split("\t", 1)
                out.append((qid, text))
            if len(out) >= n:
                break
    return out


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def post(self, path, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        for attempt in range(2):
            try:
                self.conn.request("POST", path, data, {"Content-Type": "application/json"})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise


def docids(body):
    return [h["docid"] for h in json.loads(body)["hits"]]


def load(host, port, queries, concurrency, seconds, max_requests, expected=None):
    """`concurrency` clients send queries until the time or request budget is spent."""
    lat, errors, wrong = [], [], []
    lock = threading.Lock()
    next_i = [0]
    stop_at = time.perf_counter() + seconds

    def worker():
        c = Client(host, port)
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= max_requests or time.perf_counter() > stop_at:
                return
            qid, text = queries[i % len(queries)]
            t = time.perf_counter()
            try:
                status, body = c.post("/search", {"query": text, "k": 10, "text": False})
            except Exception as e:  # noqa: BLE001 (reported, not hidden)
                with lock:
                    errors.append(repr(e))
                continue
            dt = time.perf_counter() - t
            with lock:
                if status != 200:
                    errors.append(f"{status} {body[:100]!r}")
                else:
                    lat.append(dt)
                    if expected is not None and docids(body) != expected[qid]:
                        wrong.append(qid)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else float("nan")
    return {"concurrency": concurrency, "requests": len(lat), "qps": len(lat) / wall, "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), "errors": errors, "wrong": wrong}


WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  i = (i % #bodies) + 1
  return wrk.format(nil, "/search", nil, bodies[i])
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %.6f %.3f %.3f\\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000))
end
"""


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_files(queries, work):
    """The Lua script and the request bodies it posts, written into `work`: (script, bodies)."""
    bodies = os.path.join(work, "bodies.txt")
    with open(bodies, "w") as f:
        f.writelines(json.dumps({"query": t, "k": 10, "text": False}) + "\n" for _, t in queries)
    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    return script, bodies


def load_wrk(host, port, script, bodies, concurrency, seconds, server_pid):
    """wrk, one thread and `concurrency` connections, for `seconds`; with the CPU the server took."""
    cpu0 = cpu_seconds(server_pid)
    r = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s", "-s", script,
                        f"http://{host}:{port}"], capture_output=True, text=True,
                       env=dict(os.environ, BENCH_BODIES=bodies), check=True)
    cpu1 = cpu_seconds(server_pid)
    line = next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))
    n, bad_status, sock_err, timeouts, secs, p50, p99 = line.split()[1:]
    n, secs = int(n), float(secs)
    errors = []
    if int(bad_status):
        errors.append(f"{bad_status} answers not 2xx/3xx")
    if int(sock_err) or int(timeouts):
        errors.append(f"{sock_err} socket errors, {timeouts} timeouts")
    return {"concurrency": concurrency, "requests": n, "qps": n / secs, "p50_ms": float(p50), "p99_ms": float(p99),
            "errors": errors, "wrong": [], "server_cpu_s": cpu1 - cpu0, "seconds": secs}


def faults(host, port, queries, expected, seconds):
    """Good clients beside disconnecting, slow and malformed ones; returns what each saw."""
    bad_bodies = [
        (b"{not json", 400), (b'{"qurey": "x"}', 400), (b'{"query": 5}', 400),
        (b'{"query": "x", "k": 0}', 422), (b'{"query": "   "}', 422),
        (b'{"query": "' + b"a" * (2 << 20) + b'"}', 413),
    ]
    report = {"bad_wrong_status": [], "bad_sent": 0, "disconnects": 0, "slow": 0}
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def bad():
        c = Client(host, port)
        i = 0
        while time.perf_counter() < stop:
            body, want = bad_bodies[i % len(bad_bodies)]
            i += 1
            try:
                status, _ = c.post("/search", body)
            except Exception as e:  # noqa: BLE001
                status = repr(e)
            with lock:
                report["bad_sent"] += 1
                if status != want:
                    report["bad_wrong_status"].append((body[:30], status, want))

    def disconnect():
        while time.perf_counter() < stop:
            s = socket.create_connection((host, port))
            s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"query\": ")
            s.close()
            with lock:
                report["disconnects"] += 1
            time.sleep(0.01)

    def slow():
        while time.perf_counter() < stop:
            body = json.dumps({"query": queries[0][1], "k": 10, "text": False}).encode()
            req = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                   + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            s = socket.create_connection((host, port))
            for i in range(0, len(req), 8):
                s.sendall(req[i:i + 8])
                time.sleep(0.02)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            with lock:
                report["slow"] += 1
                if not data.startswith(b"HTTP/1.1 200"):
                    report["bad_wrong_status"].append(("slow client", data[:40], 200))

    side = [threading.Thread(target=f) for f in (bad, bad, disconnect, slow)]
    for t in side:
        t.start()
    good = load(host, port, queries, 8, seconds, 10 ** 9, expected)
    for t in side:
        t.join()
    report["good"] = good
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default=os.path.join(ROOT, "target/repro/pool"))
    ap.add_argument("--queries", default=os.path.join(ROOT, "../shared/data/msmarco/queries.dev.small.tsv"))
    ap.add_argument("--n-queries", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--load", choices=["wrk", "python"], default="wrk",
                    help="the load generator of the concurrency levels (default wrk)")
    a = ap.parse_args()
    if a.load == "wrk" and not shutil.which("wrk"):
        sys.exit("bench_serve: wrk is not on PATH: apt-get install wrk (or --load python)")
    search = os.path.join(a.bin, "simlm-search")
    queries = read_queries(a.queries, a.n_queries)
    qfile = os.path.join(os.path.dirname(os.path.abspath(a.index)), "bench_serve.queries.tsv")
    with open(qfile, "w") as f:
        f.writelines(f"{q}\t{t}\n" for q, t in queries)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))

    # Batch mode: the same queries, the same binary and threads.
    r = subprocess.run([search, "batch", "--index", a.index, "--queries", qfile, "--k", "10", "--threads",
                        str(a.threads), "--out", os.devnull], capture_output=True, text=True, env=env, check=True)
    batch_qps = float(r.stderr.split("(")[-1].split(" queries/s")[0])
    # One query as `query` reports it: encode + search.
    r = subprocess.run([search, "query", "--index", a.index, "--threads", str(a.threads), queries[0][1]],
                       capture_output=True, text=True, env=env, check=True)
    tail = r.stdout.strip().splitlines()[-1]
    one_ms = float(tail.split("encode ")[1].split(" ms")[0]) + float(tail.split("search ")[1].split(" ms")[0])

    server = subprocess.Popen([search, "serve", "--index", a.index, "--addr", "127.0.0.1:0", "--threads",
                               str(a.threads)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stderr.readline()
        host, port = line.split("http://")[1].split("/")[0].split(":")
        port = int(port)
        # Expected answers: each query alone (concurrency 1), for the fault run's checks.
        c = Client(host, port)
        expected = {}
        inside = []
        for qid, text in queries[:200]:
            status, body = c.post("/search", {"query": text, "k": 10, "text": False})
            assert status == 200, body
            expected[qid] = docids(body)
            took = json.loads(body)["took_ms"]
            inside.append(took["encode"] + took["search"])
        # One query's encode + search inside the warm server, as it reports them (median of 200).
        warm_ms = sorted(inside)[len(inside) // 2]
        rss0 = rss_mib(server.pid)
        with tempfile.TemporaryDirectory() as work:
            if a.load == "wrk":
                script, bodies = wrk_files(queries, work)
                levels = [load_wrk(host, port, script, bodies, n, a.seconds, server.pid) for n in (1, 8, 64)]
            else:
                levels = [load(host, port, queries, n, a.seconds, a.requests) for n in (1, 8, 64)]
        fault = faults(host, port, queries[:200], expected, a.seconds)
        rss1 = rss_mib(server.pid)
        server.terminate()
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()

    with open("/proc/cpuinfo") as f:
        cpuinfo = f.read().splitlines()
    cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name")), "?")
    level = cpu_level()
    print(f"# bench_serve: {a.index}, {len(queries)} queries, k 10, {a.threads} threads, loopback, load by "
          f"{a.load}; {cpu} ({level}), {os.cpu_count()} CPUs")
    print(f"# engine kernels: {engine_kernels(search)}\n")
    print(f"batch mode: {batch_qps:,.1f} queries/s; one query's encode + search: {warm_ms:.2f} ms in the warm server "
          f"(median of 200 sent one at a time), {one_ms:.1f} ms in a fresh `simlm-search query` (cold)\n")
    print("| concurrency | requests | queries/s | p50 ms | p99 ms | server CPU s per s | errors |")
    print("|---|---|---|---|---|---|---|")
    for l in levels:
        cpu_rate = f"{l['server_cpu_s'] / l['seconds']:.2f}" if "server_cpu_s" in l else "-"
        print(f"| {l['concurrency']} | {l['requests']} | {l['qps']:,.1f} | {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | "
              f"{cpu_rate} | {len(l['errors'])} |")
    c64 = levels[2]["qps"] / batch_qps
    tail64 = levels[2]["p99_ms"] / levels[2]["p50_ms"]
    p50 = levels[0]["p50_ms"] / warm_ms
    print(f"\nconcurrency 64: {c64:.2f}x batch mode's queries/s (target >= 0.90: {'MET' if c64 >= 0.9 else 'NOT MET'}), "
          f"p99 {tail64:.2f}x p50 (target <= 2: {'MET' if tail64 <= 2 else 'NOT MET'})")
    print(f"concurrency 1: p50 {p50:.2f}x one query's warm encode + search (target <= 1.2: {'MET' if p50 <= 1.2 else 'NOT MET'})")
    g = fault["good"]
    print(f"\nfaults ({a.seconds:.0f} s): {g['requests']} good requests beside {fault['bad_sent']} malformed, "
          f"{fault['disconnects']} disconnecting and {fault['slow']} slow clients: {len(g['errors'])} errors and "
          f"{len(g['wrong'])} wrong answers among the good; {len(fault['bad_wrong_status'])} unexpected statuses "
          f"{fault['bad_wrong_status'][:3]}; server RSS {rss0:.0f} -> {rss1:.0f} MiB")
    for l in levels:
        if l["errors"]:
            print(f"errors at concurrency {l['concurrency']}: {l['errors'][:3]}")
    ok = not (g["errors"] or g["wrong"] or fault["bad_wrong_status"] or any(l["errors"] for l in levels))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
