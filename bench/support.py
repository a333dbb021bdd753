#!/usr/bin/env python3
"""Small pieces of bench/run that are easier in Python than in bash: free ports, bounded
readiness and drain polls, a preflight request, the store-growth scenario, the disk's fsync
latency, and the final report (a Markdown table on stdout and target/bench/results.json).
Standard library only; loopback only."""

import glob
import http.client
import json
import math
import os
import re
import socket
import sqlite3
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HEADERS = {"Content-Type": "application/json", "Codeup-Event": "Push Hook"}


def ports(count):
    """Prints `count` distinct free loopback ports (held open together while choosing)."""
    sockets = []
    for _ in range(int(count)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in sockets))
    for s in sockets:
        s.close()


def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.status, answer.read()


def wait(url, seconds, pid=None):
    """Waits until GET url answers 200, for at most `seconds` (less if process `pid` ends)."""
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        if pid is not None and not os.path.exists(f"/proc/{pid}"):
            sys.exit(f"bench: the process that was to answer {url} ended")
        try:
            if get(url, 1.0)[0] == 200:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    sys.exit(f"bench: {url} did not answer 200 within {seconds}s")


def listening(port, seconds):
    """Waits until something accepts connections on the loopback port, for at most `seconds`."""
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: nothing listens on 127.0.0.1:{port} after {seconds}s")


def check(url, status, payload):
    """POSTs the payload once as the load will, and fails unless the answer has `status`."""
    with open(payload, "rb") as f:
        body = f.read()
    request = urllib.request.Request(url, data=body, method="POST", headers=HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            got, text = answer.status, answer.read()
    except urllib.error.HTTPError as err:
        got, text = err.code, err.read()
    if got != int(status):
        sys.exit(f"bench: POST {url} answered {got}, expected {status}: {text[:300]!r}")


def drain(status_url, seconds):
    """Polls the admin status until queue_depth is 0, for at most `seconds`; prints JSON."""
    print(json.dumps(wait_drained(status_url, seconds)))


def wait_drained(status_url, seconds):
    started = time.monotonic()
    deadline = started + float(seconds)
    depth = None
    while time.monotonic() < deadline:
        try:
            depth = json.loads(get(status_url)[1])["queue_depth"]
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            depth = None
        if depth == 0:
            break
        time.sleep(0.05)
    return {"drained": depth == 0, "drain_s": round(time.monotonic() - started, 3), "queue_depth": depth}


def delivered(metrics_url, route):
    """Prints how many deliveries of `route` succeeded, from the Prometheus metrics."""
    text = get(metrics_url)[1].decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("hookrelay_deliveries_total{") and f'route="{route}"' in line and 'result="succeeded"' in line:
            total += float(line.rsplit(" ", 1)[1])
    print(int(total))


def with_delivered(drain_path, count):
    """Prints a drain record (JSON file) with the count of deliveries made meanwhile."""
    drain = read_json(drain_path)
    drain["delivered"] = int(count)
    print(json.dumps(drain))


def half_rps(work, name):
    """Prints half of a scenario's median req/s over its rounds (the fixed-rate runs' rate)."""
    result = scenario(work, name)
    if result is None:
        sys.exit(f"bench: no measured run of {name}")
    print(max(1, int(result["rps"] / 2)))


def percentile(values, q):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def fsync(directory, count):
    """Appends 4 KiB and fsyncs, `count` times, in a file in `directory`; prints the
    median and p99 latency (ms) as JSON. The file is removed afterwards."""
    path = os.path.join(directory, "fsync-probe.tmp")
    block = os.urandom(4096)
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(int(count)):
            started = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            times.append((time.perf_counter() - started) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    print(
        json.dumps(
            {
                "count": len(times),
                "bytes": 4096,
                "median_ms": round(statistics.median(times), 3),
                "p99_ms": round(percentile(times, 99), 3),
                "max_ms": round(max(times), 3),
            }
        )
    )


def store_bytes(db):
    """Size of the database and its WAL after a TRUNCATE checkpoint (safe while hookrelay
    runs: the store is in WAL mode). Retries while a reader keeps the checkpoint busy."""
    result = None
    for _ in range(50):
        connection = sqlite3.connect(db, timeout=10)
        try:
            result = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            connection.close()
        if result and result[0] == 0:
            break
        time.sleep(0.1)
    wal = db + "-wal"
    size = os.path.getsize(db) + (os.path.getsize(wal) if os.path.exists(wal) else 0)
    return size, {"busy": result[0], "wal_frames": result[1], "checkpointed": result[2]} if result else None


def post_many(url, body, count, threads):
    """POSTs `body` `count` times over `threads` keep-alive connections; returns the
    answers' statuses counted ("error" for a failed request). Each request times out after 10 s."""
    target = urllib.parse.urlsplit(url)
    path = target.path + (f"?{target.query}" if target.query else "")
    lock = threading.Lock()
    left = [count]
    counts = {}

    def worker():
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                try:
                    connection.request("POST", path, body=body, headers=HEADERS)
                    answer = connection.getresponse()
                    answer.read()
                    status = answer.status
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                    status = "error"
                with lock:
                    counts[status] = counts.get(status, 0) + 1
        finally:
            connection.close()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return counts


def store(ingress_url, admin_url, db, payload, count, seconds):
    """Store growth while a target is down: one POST (202), drained, the store's empty
    size; then `count` POSTs, until every delivery has failed (queue_depth 0, at most
    `seconds`), the size again. Prints JSON; fails if the queue does not drain."""
    count, seconds = int(count), float(seconds)
    with open(payload, "rb") as f:
        body = f.read()
    status_url = admin_url + "/api/status"
    check(ingress_url, 202, payload)
    first = wait_drained(status_url, seconds)
    if not first["drained"]:
        sys.exit(f"bench: store: the first event was not drained within {seconds:.0f}s: {first}")
    empty, empty_checkpoint = store_bytes(db)
    started = time.monotonic()
    counts = post_many(ingress_url, body, count, 4)
    post_s = time.monotonic() - started
    accepted = counts.get(202, 0)
    drained = wait_drained(status_url, seconds)
    if not drained["drained"]:
        sys.exit(f"bench: store: queue_depth not 0 {seconds:.0f}s after {count} events to a target that is down: {drained}")
    after, after_checkpoint = store_bytes(db)
    items = json.loads(get(admin_url + "/api/deliveries?limit=1")[1])["items"]
    if not items:
        sys.exit("bench: store: GET /api/deliveries lists no delivery")
    detail = json.loads(get(admin_url + "/api/deliveries/" + urllib.parse.quote(items[0]["id"], safe=""))[1])
    per_event = (after - empty) / count
    print(
        json.dumps(
            {
                "events": count,
                "answers": {str(k): v for k, v in counts.items()},
                "accepted": accepted,
                "post_s": round(post_s, 3),
                "drain_s": drained["drain_s"],
                "payload_bytes": len(body),
                "empty_bytes": empty,
                "after_bytes": after,
                "bytes_per_event": round(per_event, 1),
                "vs_payload": round(per_event / len(body), 3),
                "checkpoint": {"empty": empty_checkpoint, "after": after_checkpoint},
                "sample_delivery": {
                    "id": detail["delivery"]["id"],
                    "status": detail["delivery"]["status"],
                    "attempts_field": detail["delivery"]["attempts"],
                    "last_error": detail["delivery"]["last_error"],
                },
                "attempts_seen": len(detail["attempts"]),
            }
        )
    )


# ---------------------------------------------------------------------------------------
# Report

SCENARIOS = [
    ("sink", "sink directly (ceiling)"),
    ("nginx", "nginx `proxy_pass`, upstream keep-alive, access log"),
    ("node", "Node relay (`http` module, match + transform)"),
    ("passthrough", "hookrelay pass-through (no route → `upstream:`)"),
    ("sync", "hookrelay `respond: sync` (match + transform)"),
    ("async", "hookrelay `respond: async`, durable store (accepted)"),
    ("async_pg", "hookrelay `respond: async` on PostgreSQL (accepted)"),
]

# (key, what, limit, higher is better, format)
TARGETS = [
    ("passthrough_vs_nginx", "pass-through req/s ÷ nginx", 1.0, True, "{:.2f}×"),
    ("passthrough_cpu_vs_nginx", "pass-through CPU µs/request ÷ nginx's", 1.0, False, "{:.2f}×"),
    ("sync_vs_node", "sync route req/s ÷ Node relay", 3.0, True, "{:.2f}×"),
    ("sync_cpu_vs_nginx", "sync route CPU µs/request ÷ nginx's", 2.0, False, "{:.2f}×"),
    ("async_vs_sync", "async events/s accepted and delivered ÷ sync route req/s", 0.8, True, "{:.2f}×"),
    ("async_pg_vs_async", "async events/s accepted and delivered, PostgreSQL ÷ SQLite", 0.5, True, "{:.2f}×"),
    ("match_render_1000_us", "match + render, 1,000 routes", 20.0, False, "{:.1f} µs"),
    ("p99_added_ms", "p99 added over nginx at half of nginx's rate, pass-through", 1.0, False, "{:.2f} ms"),
    ("rss_mib", "peak RSS under load (hookrelay)", 32.0, False, "{:.1f} MiB"),
    ("store_vs_payload", "store bytes per event while its target is down ÷ payload", 3.0, False, "{:.2f}×"),
]


DURATION_NOTE = "{seconds} s per run after {warmup_seconds} s not counted, {connections} connections"


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def one_run(wrk, cpu):
    """The figures of one measured wrk run, with the server's CPU time over it."""
    seconds = wrk["duration_us"] / 1e6
    errors = wrk["errors"]
    ok = wrk["requests"] - errors["status"]
    cpu_us = None
    if cpu is not None and ok > 0:
        cpu_us = round(cpu["ticks"] * 1e6 / cpu["clk_tck"] / ok, 2)
    return {
        "requests": wrk["requests"],
        "ok": ok,
        "seconds": round(seconds, 3),
        "rps": round(ok / seconds, 1),
        "non_2xx": errors["status"],
        "socket_errors": {k: v for k, v in errors.items() if k != "status"},
        "latency_ms": {k: round(v / 1000, 3) for k, v in wrk["latency_us"].items()},
        "cpu_ticks": None if cpu is None else cpu["ticks"],
        "cpu_s": None if cpu is None else round(cpu["ticks"] / cpu["clk_tck"], 3),
        "cpu_us_per_request": cpu_us,
    }


def scenario(work, name):
    """A scenario's rounds (NAME.REP.wrk.json and NAME.REP.cpu): the median over them of
    req/s and of CPU µs/request, and the latency of the median-req/s round (for an even
    count, the lower of the two middle ones)."""
    runs = []
    for path in glob.glob(os.path.join(work, f"{glob.escape(name)}.*.wrk.json")):
        found = re.fullmatch(re.escape(name) + r"\.(\d+)\.wrk\.json", os.path.basename(path))
        wrk = read_json(path)
        if found and wrk:
            rep = int(found.group(1))
            run = one_run(wrk, read_json(os.path.join(work, f"{name}.{rep}.cpu")))
            runs.append({"rep": rep, **run})
    if not runs:
        return None
    runs.sort(key=lambda run: run["rep"])
    middle = sorted(runs, key=lambda run: run["rps"])[(len(runs) - 1) // 2]
    cpu = [run["cpu_us_per_request"] for run in runs if run["cpu_us_per_request"] is not None]
    rss = read_text(os.path.join(work, f"{name}.rss"))
    result = {
        "reps": len(runs),
        "rps": round(statistics.median(run["rps"] for run in runs), 1),
        "cpu_us_per_request": round(statistics.median(cpu), 2) if cpu else None,
        "median_rep": middle["rep"],
        "latency_ms": middle["latency_ms"],
        "requests": middle["requests"],
        "ok": middle["ok"],
        "seconds": middle["seconds"],
        "non_2xx": sum(run["non_2xx"] for run in runs),
        "socket_errors": sum(sum(run["socket_errors"].values()) for run in runs),
        "peak_rss_kib": int(rss) if rss else None,
        "runs": runs,
    }
    extra = read_json(os.path.join(work, f"{name}.extra.json"))
    if extra:
        result.update(extra)
        if "drain_s" in extra and "delivered" in extra:
            result["delivered_per_s"] = round(extra["delivered"] / (middle["seconds"] + extra["drain_s"]), 1)
    return result


def micro(criterion_home):
    """Median time per iteration (ns) of each criterion benchmark of this run."""
    found = {}
    for path in glob.glob(os.path.join(criterion_home, "**", "new", "benchmark.json"), recursive=True):
        meta = read_json(path)
        estimates = read_json(os.path.join(os.path.dirname(path), "estimates.json"))
        if meta and estimates:
            found[meta["full_id"]] = {
                "median_ns": round(estimates["median"]["point_estimate"], 1),
                "mean_ns": round(estimates["mean"]["point_estimate"], 1),
            }
    return dict(sorted(found.items()))


def ratio(a, b):
    return round(a / b, 4) if a is not None and b else None


def fmt_ms(x):
    return "–" if x is None else f"{x:.2f} ms"


def fmt_rss(kib):
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def fmt_us(x):
    return "–" if x is None else f"{x:.1f} µs"


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


# The fixed-rate runs: (server, kind); "fixed" is at half of nginx's req/s, "fixed-low" at
# half of the sync route's.
FIXED_RATE_RUNS = (("nginx", "fixed"), ("passthrough", "fixed"), ("nginx", "fixed-low"), ("sync", "fixed-low"))
FIXED_RATE_LABELS = {"passthrough": "hookrelay pass-through", "sync": "hookrelay sync route"}


def report(work, out, meta_path):
    meta = read_json(meta_path) or {}
    results = {name: scenario(work, name) for name, _ in SCENARIOS}
    rps = {name: (r or {}).get("rps") for name, r in results.items()}
    cpu = {name: (r or {}).get("cpu_us_per_request") for name, r in results.items()}
    # An async route's events through to their delivery: accepted during the load, delivered
    # by the time the queue drained (the lesser, so that neither a queue left to drain nor
    # deliveries wrk did not count flatter it).
    through = {
        name: min(r["rps"], r["delivered_per_s"]) if r and "delivered_per_s" in r else (r or {}).get("rps")
        for name, r in results.items()
    }
    fixed = {(name, kind): read_json(os.path.join(work, f"{name}.{kind}.json")) for name, kind in FIXED_RATE_RUNS}
    bench = micro(os.path.join(work, "criterion"))
    store_result = read_json(os.path.join(work, "store.json"))
    if store_result is not None:
        rss = read_text(os.path.join(work, "store.rss"))
        store_result["peak_rss_kib"] = int(rss) if rss else None
    bearer_result = read_json(os.path.join(work, "store-bearer.json"))
    fsync_result = read_json(os.path.join(work, "fsync.json"))

    ratios = {
        "passthrough_vs_nginx": ratio(rps["passthrough"], rps["nginx"]),
        "passthrough_vs_node": ratio(rps["passthrough"], rps["node"]),
        "sync_vs_nginx": ratio(rps["sync"], rps["nginx"]),
        "sync_vs_node": ratio(rps["sync"], rps["node"]),
        "async_vs_sync": ratio(through["async"], rps["sync"]),
        "async_pg_vs_async": ratio(through["async_pg"], through["async"]),
        "passthrough_cpu_vs_nginx": ratio(cpu["passthrough"], cpu["nginx"]),
        "sync_cpu_vs_nginx": ratio(cpu["sync"], cpu["nginx"]),
        "sync_cpu_vs_node": ratio(cpu["sync"], cpu["node"]),
        "async_cpu_vs_sync": ratio(cpu["async"], cpu["sync"]),
    }
    latency = []
    for kind, server in (("fixed", "passthrough"), ("fixed-low", "sync")):
        n, h = fixed[("nginx", kind)], fixed[(server, kind)]
        if n and h:
            latency.append(
                {
                    "rate": n["target_rate"],
                    "rate_is": "half of nginx's req/s" if kind == "fixed" else "half of the sync route's req/s",
                    "server": server,
                    "nginx": n,
                    "hookrelay": h,
                    "p99_added_ms": round(h["latency_ms"]["p99"] - n["latency_ms"]["p99"], 3),
                    "service_p99_added_ms": round(h["service_ms"]["p99"] - n["service_ms"]["p99"], 3),
                }
            )
    hookrelay_rss = [r["peak_rss_kib"] for n, r in results.items() if r and n in ("passthrough", "sync", "async") and r["peak_rss_kib"]]
    values = {
        **ratios,
        "p99_added_ms": latency[0]["p99_added_ms"] if latency and latency[0]["rate_is"].startswith("half of nginx") else None,
        "rss_mib": max(hookrelay_rss) / 1024 if hookrelay_rss else None,
        "match_render_1000_us": bench.get("match_render/1000", {}).get("median_ns", 0) / 1e3 or None,
        "store_vs_payload": store_result["vs_payload"] if store_result else None,
    }
    details = {
        "passthrough_cpu_vs_nginx": f"{fmt_us(cpu['passthrough'])} vs {fmt_us(cpu['nginx'])}",
        "sync_cpu_vs_nginx": f"{fmt_us(cpu['sync'])} vs {fmt_us(cpu['nginx'])}",
        "store_vs_payload": f"{store_result['bytes_per_event']:,.0f} B/event" if store_result else None,
    }
    targets = []
    for key, what, limit, higher, form in TARGETS:
        value = values.get(key)
        met = None if value is None else (value >= limit if higher else value <= limit)
        targets.append({"target": key, "what": what, "value": value, "limit": limit, "higher_is_better": higher, "met": met})

    document = {
        "meta": meta,
        "scenarios": results,
        "ratios": ratios,
        "latency_at_fixed_rate": latency,
        "store_while_target_down": store_result,
        "store_while_bearer_target_down": bearer_result,
        "fsync": fsync_result,
        "micro": bench,
        "targets": targets,
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")

    lines = []
    say = lines.append
    say(f"wrk {meta.get('wrk_settings', '')}, payload `{meta.get('payload', '')}`; {meta.get('machine', '')}")
    say("")
    say(
        f"Rows 2–5: median over {meta.get('reps', '?')} alternating rounds of req/s and of CPU µs/request (the server's "
        f"utime + stime, children included, per 2xx answer); latency of the median-req/s round; peak RSS at the end. "
        f"Rows 1 and 6: one run. hookrelay at its default log level (info), nginx with its default access log."
    )
    say("")
    say("| # | setup | req/s | CPU µs/req | p50 | p99 | p99.9 | peak RSS | vs nginx | vs Node |")
    say("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for index, (name, label) in enumerate(SCENARIOS, 1):
        r = results[name]
        if r is None:
            say(f"| {index} | {label} | not run | | | | | | | |")
            continue
        lat = r["latency_ms"]
        vs_nginx = ratio(r["rps"], rps["nginx"]) if name not in ("sink", "nginx") else None
        vs_node = ratio(r["rps"], rps["node"]) if name not in ("sink", "nginx", "node") else None
        notes = []
        if r["non_2xx"]:
            notes.append(f"{r['non_2xx']:,} non-2xx")
        if r["socket_errors"]:
            notes.append(f"{r['socket_errors']:,} socket errors")
        note = f" ({', '.join(notes)})" if notes else ""
        say(
            f"| {index} | {label} | {r['rps']:,.0f}{note} | {fmt_us(r['cpu_us_per_request'])} | {fmt_ms(lat['p50'])} "
            f"| {fmt_ms(lat['p99'])} | {fmt_ms(lat['p99_9'])} | {fmt_rss(r['peak_rss_kib'])} "
            f"| {'' if vs_nginx is None else f'{vs_nginx:.2f}×'} | {'' if vs_node is None else f'{vs_node:.2f}×'} |"
        )
    for name, title in (("async", "Async"), ("async_pg", "Async on PostgreSQL")):
        a = results[name]
        if not a or "drain_s" not in a:
            continue
        say("")
        say(
            f"{title}: {a['ok']:,} events accepted in {a['seconds']:.1f} s; the queue was empty "
            f"{a['drain_s']:.1f} s after the load stopped, with {a.get('delivered', 0):,} deliveries received by the sink "
            f"({a.get('delivered_per_s', 0):,.0f}/s over {a['seconds'] + a['drain_s']:.1f} s; wrk does not count the "
            f"requests still in flight when it stops)"
            + ("" if a.get("drained") else " — **not drained within the bound**")
            + ". Its CPU µs/request is over the measured run only (deliveries made after it are not counted)."
        )
    if store_result:
        s = store_result
        sample = s["sample_delivery"]
        say("")
        say(
            f"Store while its target is down: {s['events']:,} events of {s['payload_bytes']:,} bytes "
            f"({s['accepted']:,} answered 202) to an async route whose target refuses connections; every delivery "
            f"failed {s['drain_s']:.1f} s after the last POST (one delivery, status {sample['status']}, shows "
            f"{s['attempts_seen']} attempts). Store (database + WAL after a TRUNCATE checkpoint): "
            f"{s['empty_bytes']:,} → {s['after_bytes']:,} bytes, **{s['bytes_per_event']:,.0f} bytes per event, "
            f"{s['vs_payload']:.2f}× the payload**; peak RSS {fmt_rss(s.get('peak_rss_kib'))}."
        )
    if bearer_result:
        b = bearer_result
        say("")
        say(
            f"The same with `bearer:` on the target (each attempt records the masked `authorization` header it "
            f"added): {b['empty_bytes']:,} → {b['after_bytes']:,} bytes, **{b['bytes_per_event']:,.0f} bytes per event, "
            f"{b['vs_payload']:.2f}× the payload**."
        )
    if fsync_result:
        say("")
        say(
            f"Disk fsync latency in the store's folder ({fsync_result['count']} × write {fsync_result['bytes']:,} bytes + "
            f"fsync; it bounds group commit): median {fsync_result['median_ms']:.2f} ms, p99 {fsync_result['p99_ms']:.2f} ms."
        )
    if latency:
        say("")
        say(
            f"Latency at a fixed rate, {DURATION_NOTE.format(**latency[0]['nginx'])}, counted from each request's due time "
            f"(from its send time in the last column); {meta.get('fixed_rate_tool', '')}:"
        )
        say("")
        say("| rate | server | achieved req/s | p50 | p90 | p99 | p99.9 | p99 from send |")
        say("|---|---|---:|---:|---:|---:|---:|---:|")
        for point in latency:
            for label, r in (("nginx `proxy_pass`", point["nginx"]), (FIXED_RATE_LABELS[point["server"]], point["hookrelay"])):
                lat, svc = r["latency_ms"], r["service_ms"]
                bad = r["errors"] + r["non_2xx"] + r["unfinished"]
                note = f" ({bad:,} unanswered or failed)" if bad else ""
                say(
                    f"| {point['rate']:,}/s ({point['rate_is']}) | {label} | {r['achieved_rate']:,.0f}{note} | {fmt_ms(lat['p50'])} "
                    f"| {fmt_ms(lat['p90'])} | {fmt_ms(lat['p99'])} | {fmt_ms(lat['p99_9'])} | {fmt_ms(svc['p99'])} |"
                )
        say("")
        for point in latency:
            say(
                f"p99 added by {FIXED_RATE_LABELS[point['server']]} over nginx at {point['rate']:,}/s: {point['p99_added_ms']:,.2f} ms "
                f"(from send: {point['service_p99_added_ms']:,.2f} ms)."
            )
    if bench:
        say("")
        say("| micro-benchmark (criterion) | median |")
        say("|---|---:|")
        for name, figures in bench.items():
            say(f"| `{name}` | {fmt_ns(figures['median_ns'])} |")
    say("")
    say("| goal | target | measured | |")
    say("|---|---:|---:|---|")
    for (key, what, limit, higher, form), t in zip(TARGETS, targets):
        goal = ("≥ " if higher else "≤ ") + form.format(limit)
        measured = "–" if t["value"] is None else form.format(t["value"])
        if t["value"] is not None and details.get(key):
            measured += f" ({details[key]})"
        met = "not measured" if t["met"] is None else ("met" if t["met"] else "**not met**")
        say(f"| {what} | {goal} | {measured} | {met} |")
    print("\n".join(lines))


def relay_config(port, admin, sink, store):
    """Prints the benchmarks' hookrelay config: listening on `port` (admin on `admin`),
    proxying what no route takes to the sink, a sync and an async route with the same match
    and DingTalk transform, the store given as YAML (`{ path: ... }` or `{ url: ... }`)."""
    robot = f"http://127.0.0.1:{sink}/robot/send?access_token=x"
    routes = ""
    for name, respond in (("codeup-sync", "sync"), ("codeup-async", "async")):
        routes += f"""  - name: {name}
    source: codeup
    respond: {respond}
    match: {{ path: /hooks/{respond}, event: push, headers: {{ Codeup-Event: Push Hook }}, body: [ {{ path: $.ref, regex: "^refs/heads/" }} ] }}
    forward:
      - url: {robot}
        body: {{ msgtype: markdown, markdown: {{ title: "push {{{{body.repository.name}}}}", text: "### {{{{body.user_name}}}} pushed {{{{len body.commits}}}} commit(s) to {{{{body.ref}}}}" }} }}
"""
    print(f"""listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin} }}
upstream: http://127.0.0.1:{sink}
store: {store}
limits: {{ queue_capacity: 1000000 }}
routes:
{routes}""", end="")


def main():
    command, args = sys.argv[1], sys.argv[2:]
    commands = {
        "ports": ports,
        "wait": wait,
        "listening": listening,
        "check": check,
        "drain": drain,
        "delivered": delivered,
        "with_delivered": with_delivered,
        "half_rps": half_rps,
        "fsync": fsync,
        "store": store,
        "report": report,
        "relay_config": relay_config,
    }
    if command not in commands:
        sys.exit(f"unknown command {command}")
    commands[command](*args)


if __name__ == "__main__":
    main()
