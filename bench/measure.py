#!/usr/bin/env python3
"""Measurement helpers for bench/run (standard library only).

  measure.py rss PID                       resident memory of PID and its descendants, KiB
  measure.py oha-summary FILE              requests/s, p50 and p99 (ms) from oha's JSON
  measure.py cert-switch ARGS...           PUT of a bundle -> haproxy serving it, ms (median, p99)
  measure.py table RESULTS.json            the comparison table, as text
"""
import http.client
import json
import os
import ssl
import statistics
import sys
import time


def rss_tree(root):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
        stack.extend(children.get(pid, []))
    return total


def oha_summary(path):
    with open(path) as f:
        data = json.load(f)
    summary = data["summary"]
    pct = data.get("latencyPercentiles", {})
    ok = sum(v for k, v in data.get("statusCodeDistribution", {}).items() if k.startswith("2"))
    errors = sum(data.get("errorDistribution", {}).values())
    return {
        "rps": summary["requestsPerSec"],
        "p50_ms": (pct.get("p50") or 0) * 1000,
        "p99_ms": (pct.get("p99") or 0) * 1000,
        "ok": ok,
        "errors": errors,
    }


def cert_switch(agent, ca, cert, key, instance, port, bundle_a, bundle_b, rounds):
    host, agent_port = agent.rsplit(":", 1)
    api_ctx = ssl.create_default_context(cafile=ca)
    api_ctx.load_cert_chain(cert, key)
    api_ctx.check_hostname = False
    probe_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe_ctx.check_hostname = False
    probe_ctx.verify_mode = ssl.CERT_NONE
    bundles = []
    for path in (bundle_a, bundle_b):
        with open(path, "rb") as f:
            body = f.read()
        pem = body[body.index(b"-----BEGIN CERTIFICATE-----"):]
        leaf = pem[: pem.index(b"-----END CERTIFICATE-----") + 25].decode()
        bundles.append((body, ssl.PEM_cert_to_DER_cert(leaf)))
    conn = http.client.HTTPSConnection(host, int(agent_port), context=api_ctx)
    samples = []
    import socket

    for i in range(rounds):
        body, der = bundles[i % 2]
        start = time.perf_counter()
        conn.request("PUT", f"/instances/{instance}/certificates/bench.example.pem", body=body)
        resp = conn.getresponse()
        text = resp.read()
        if resp.status != 201:
            raise SystemExit(f"PUT failed: {resp.status} {text!r}")
        while True:
            with socket.create_connection(("127.0.0.1", port)) as s:
                with probe_ctx.wrap_socket(s) as t:
                    if t.getpeercert(binary_form=True) == der:
                        break
            if time.perf_counter() - start > 10:
                raise SystemExit("new certificate never served")
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "rounds": rounds,
    }


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "MiB":
        return f"{v / 1024:.1f} MiB"
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit == "us":
        return f"{v:.0f} µs"
    return f"{v:,.0f}"


def ratio(a, b, lower_is_better):
    if a is None or b in (None, 0):
        return "n/a"
    r = (b / a) if lower_is_better else (a / b)
    return f"{r:.2f}x"


def table(path):
    with open(path) as f:
        r = json.load(f)
    rows = []
    for key, label, unit, lower in r["rows"]:
        a = r["applianced"].get(key)
        n = r["nginx"].get(key)
        o = r["amphora"].get(key)
        rows.append((label, fmt(a, unit), fmt(n, unit), fmt(o, unit), ratio(a, n, lower), ratio(a, o, lower)))
    head = ("metric", "applianced", "nginx", "amphora agent", "vs nginx", "vs amphora")
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    line = lambda cols: "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(x) for x in rows]
    out.append("")
    out.append("Ratios: above 1.00x means applianced is better (faster, or less memory).")
    out.append(f"Machine: {r['machine']}")
    return "\n".join(out)


def main():
    cmd = sys.argv[1]
    if cmd == "rss":
        print(rss_tree(int(sys.argv[2])))
    elif cmd == "oha-summary":
        print(json.dumps(oha_summary(sys.argv[2])))
    elif cmd == "cert-switch":
        a = sys.argv[2:]
        print(json.dumps(cert_switch(a[0], a[1], a[2], a[3], a[4], int(a[5]), a[6], a[7], int(a[8]))))
    elif cmd == "table":
        print(table(sys.argv[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
