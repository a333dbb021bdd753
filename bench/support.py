#!/usr/bin/env python3
"""Small pieces of bench/run that are easier in Python than in bash: free ports, bounded
readiness and drain polls, a preflight request, and the final report (a Markdown table on
stdout and target/bench/results.json). Standard library only; loopback only."""

import glob
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request


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


def wait(url, seconds):
    """Waits until GET url answers 200, for at most `seconds`."""
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
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
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "Codeup-Event": "Push Hook"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            got, text = answer.status, answer.read()
    except urllib.error.HTTPError as err:
        got, text = err.code, err.read()
    if got != int(status):
        sys.exit(f"bench: POST {url} answered {got}, expected {status}: {text[:300]!r}")


def drain(status_url, seconds):
    """Polls the admin status until queue_depth is 0, for at most `seconds`; prints JSON."""
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
    print(json.dumps({"drained": depth == 0, "drain_s": round(time.monotonic() - started, 3), "queue_depth": depth}))


def delivered(metrics_url, route):
    """Prints how many deliveries of `route` succeeded, from the Prometheus metrics."""
    text = get(metrics_url)[1].decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("hookrelay_deliveries_total{") and f'route="{route}"' in line and 'result="succeeded"' in line:
            total += float(line.rsplit(" ", 1)[1])
    print(int(total))


# ---------------------------------------------------------------------------------------
# Report

SCENARIOS = [
    ("sink", "sink directly (ceiling)"),
    ("nginx", "nginx `proxy_pass`, upstream keep-alive"),
    ("node", "Node relay (`http` module, match + transform)"),
    ("passthrough", "hookrelay pass-through (no route → `upstream:`)"),
    ("sync", "hookrelay `respond: sync` (match + transform)"),
    ("async", "hookrelay `respond: async`, durable store (accepted)"),
]

# (key, what, limit, higher is better)
TARGETS = [
    ("passthrough_vs_nginx", "pass-through req/s ÷ nginx", 1.0, True, "{:.2f}×"),
    ("sync_vs_nginx", "sync route req/s ÷ nginx", 0.9, True, "{:.2f}×"),
    ("sync_vs_node", "sync route req/s ÷ Node relay", 2.0, True, "{:.2f}×"),
    ("p99_added_ms", "p99 added over nginx at half load", 1.0, False, "{:.2f} ms"),
    ("rss_mib", "peak RSS under load (hookrelay)", 32.0, False, "{:.1f} MiB"),
    ("match_render_1000_us", "match + render, 1,000 routes", 20.0, False, "{:.1f} µs"),
    ("compile_1000_ms", "compile 1,000 routes", 100.0, False, "{:.1f} ms"),
    ("async_vs_sync", "async accepted/s ÷ sync route req/s", 0.5, True, "{:.2f}×"),
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


def scenario(work, name):
    wrk = read_json(os.path.join(work, f"{name}.wrk.json"))
    if wrk is None:
        return None
    seconds = wrk["duration_us"] / 1e6
    errors = wrk["errors"]
    ok = wrk["requests"] - errors["status"]
    rss = read_text(os.path.join(work, f"{name}.rss"))
    result = {
        "requests": wrk["requests"],
        "seconds": round(seconds, 3),
        "rps": round(ok / seconds, 1),
        "non_2xx": errors["status"],
        "socket_errors": {k: v for k, v in errors.items() if k != "status"},
        "latency_ms": {k: round(v / 1000, 3) for k, v in wrk["latency_us"].items()},
        "peak_rss_kib": int(rss) if rss else None,
    }
    extra = read_json(os.path.join(work, f"{name}.extra.json"))
    if extra:
        result.update(extra)
        if "drain_s" in extra and "delivered" in extra:
            result["delivered_per_s"] = round(extra["delivered"] / (seconds + extra["drain_s"]), 1)
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


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def report(work, out, meta_path):
    meta = read_json(meta_path) or {}
    results = {name: scenario(work, name) for name, _ in SCENARIOS}
    rps = {name: (r or {}).get("rps") for name, r in results.items()}
    fixed = {(name, kind): read_json(os.path.join(work, f"{name}.{kind}.json")) for name in ("nginx", "sync") for kind in ("fixed", "fixed-low")}
    bench = micro(os.path.join(work, "criterion"))

    ratios = {
        "passthrough_vs_nginx": ratio(rps["passthrough"], rps["nginx"]),
        "passthrough_vs_node": ratio(rps["passthrough"], rps["node"]),
        "sync_vs_nginx": ratio(rps["sync"], rps["nginx"]),
        "sync_vs_node": ratio(rps["sync"], rps["node"]),
        "async_vs_sync": ratio(rps["async"], rps["sync"]),
    }
    latency = []
    for kind in ("fixed", "fixed-low"):
        n, h = fixed[("nginx", kind)], fixed[("sync", kind)]
        if n and h:
            latency.append(
                {
                    "rate": n["target_rate"],
                    "rate_is": "half of nginx's req/s" if kind == "fixed" else "half of the sync route's req/s",
                    "nginx": n,
                    "sync": h,
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
        "compile_1000_ms": bench.get("compile/1000", {}).get("median_ns", 0) / 1e6 or None,
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
    say("| # | setup | req/s | p50 | p99 | p99.9 | peak RSS | vs nginx | vs Node |")
    say("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for index, (name, label) in enumerate(SCENARIOS, 1):
        r = results[name]
        if r is None:
            say(f"| {index} | {label} | not run | | | | | | |")
            continue
        lat = r["latency_ms"]
        vs_nginx = ratio(r["rps"], rps["nginx"]) if name not in ("sink", "nginx") else None
        vs_node = ratio(r["rps"], rps["node"]) if name not in ("sink", "nginx", "node") else None
        note = f" ({r['non_2xx']} non-2xx)" if r["non_2xx"] else ""
        say(
            f"| {index} | {label} | {r['rps']:,.0f}{note} | {fmt_ms(lat['p50'])} | {fmt_ms(lat['p99'])} | {fmt_ms(lat['p99_9'])} "
            f"| {fmt_rss(r['peak_rss_kib'])} | {'' if vs_nginx is None else f'{vs_nginx:.2f}×'} "
            f"| {'' if vs_node is None else f'{vs_node:.2f}×'} |"
        )
    a = results["async"]
    if a and "drain_s" in a:
        say("")
        say(
            f"Async: {a['requests'] - a['non_2xx']:,} events accepted in {a['seconds']:.1f} s; the queue was empty "
            f"{a['drain_s']:.1f} s after the load stopped, with {a.get('delivered', 0):,} deliveries received by the sink "
            f"({a.get('delivered_per_s', 0):,.0f}/s over {a['seconds'] + a['drain_s']:.1f} s; wrk does not count the "
            f"requests still in flight when it stops)"
            + ("" if a.get("drained") else " — **not drained within the bound**")
            + "."
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
            for label, r in (("nginx `proxy_pass`", point["nginx"]), ("hookrelay sync route", point["sync"])):
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
                f"p99 added by hookrelay over nginx at {point['rate']:,}/s: {point['p99_added_ms']:,.2f} ms "
                f"(from send: {point['service_p99_added_ms']:,.2f} ms)."
            )
    if bench:
        say("")
        say("| micro-benchmark (criterion) | median |")
        say("|---|---:|")
        for name, figures in bench.items():
            say(f"| `{name}` | {fmt_ns(figures['median_ns'])} |")
    say("")
    say("| target | goal | measured | met |")
    say("|---|---:|---:|---|")
    for (key, what, limit, higher, form), t in zip(TARGETS, targets):
        goal = ("≥ " if higher else "≤ ") + form.format(limit)
        measured = "–" if t["value"] is None else form.format(t["value"])
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        say(f"| {what} | {goal} | {measured} | {met} |")
    print("\n".join(lines))


def main():
    command, args = sys.argv[1], sys.argv[2:]
    commands = {"ports": ports, "wait": wait, "listening": listening, "check": check, "drain": drain, "delivered": delivered, "report": report}
    if command not in commands:
        sys.exit(f"unknown command {command}")
    commands[command](*args)


if __name__ == "__main__":
    main()
