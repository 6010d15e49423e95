#!/usr/bin/env python3
"""Measurement helpers for bench/run (standard library only).

  measure.py rss PID                       resident memory of PID and its descendants, KiB
  measure.py oha-summary FILE              requests/s, p50 and p99 (ms) from oha's JSON
  measure.py cert-switch ARGS...           PUT of a bundle -> haproxy serving it, ms (median, p99)
  measure.py controller-sweep ARGS...      N appliances through the controller, then its
                                           /status sweep against a direct one, ms
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


def rss_one(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def controller_sweep(api, ca, user, password, n, rounds, state, ctl_pid):
    """Creates n appliances through the controller's API, waits until all are active,
    then times the controller collecting /status from all of them (POST /v1/ping with
    check=status) against a direct sweep from this script (a pool of 64 threads, the
    controller's own client certificate), both over the same agents, same run."""
    import base64
    import concurrent.futures
    import urllib.request

    host, port = api.split("//", 1)[1].split(":")
    ctx = ssl.create_default_context(cafile=ca)

    def call(method, path, body=None, token=None, basic=None):
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=120)
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if basic:
            headers["authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, json.loads(data) if data else None

    status, tok = call("POST", "/v1/tokens", basic=f"{user}:{password}")
    assert status == 201, tok
    token = tok["token"]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        created = list(pool.map(lambda i: call("POST", "/v1/appliances", {"name": f"bench-{i}", "ttl_minutes": 235}, token), range(n)))
    assert all(s == 202 for s, _ in created), [c for c in created if c[0] != 202][:1]
    deadline = time.monotonic() + 600
    while True:
        status, active = call("GET", "/v1/appliances?state=active", token=token)
        if len(active) == n:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(active)} of {n} appliances active")
        time.sleep(0.5)
    spawn_s = time.monotonic() - started
    time.sleep(2)
    idle_kib = rss_one(ctl_pid)
    agents_kib = rss_tree(ctl_pid) - idle_kib

    sweeps, peak = [], idle_kib
    for _ in range(rounds):
        t = time.monotonic()
        status, res = call("POST", "/v1/ping", {"check": "status"}, token)
        sweeps.append((time.monotonic() - t) * 1000)
        assert status == 200 and res["reachable"] == n, res and {k: res[k] for k in ("targets", "reachable")}
        peak = max(peak, rss_one(ctl_pid))

    client = ssl.create_default_context(cafile=f"{state}/ca/ca.crt")
    client.load_cert_chain(f"{state}/ca/controller-client.crt", f"{state}/ca/controller-client.key")
    targets = [(a["address"], int(a["agent_url"].rsplit(":", 1)[1].strip("/"))) for a in active]

    def direct(t):
        conn = http.client.HTTPSConnection(t[0], t[1], context=client, timeout=30)
        conn.request("GET", "/status")
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.status

    direct_ms = []
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        for _ in range(rounds):
            t = time.monotonic()
            codes = list(pool.map(direct, targets))
            direct_ms.append((time.monotonic() - t) * 1000)
            assert all(c == 200 for c in codes)
    return {
        "agents": n,
        "spawn_s": spawn_s,
        "sweep_median_ms": statistics.median(sweeps),
        "sweep_max_ms": max(sweeps),
        "direct_median_ms": statistics.median(direct_ms),
        "controller_rss_idle": idle_kib,
        "controller_rss_sweep": peak,
        "agents_rss_total": agents_kib,
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
    c = r.get("controller")
    if c:
        ratio_direct = ratio(c["sweep_median_ms"], c["direct_median_ms"], True)
        out.append("")
        out.append(f"Controller, {c['agents']} real agents (spawned through the API in {c['spawn_s']:.1f} s):")
        out.append(f"| collect /status from all, median of sweeps | {c['sweep_median_ms']:.0f} ms "
                   f"| direct sweep, Python pool of 64 threads: {c['direct_median_ms']:.0f} ms | {ratio_direct} |")
        out.append(f"| controller resident memory, idle / during sweeps | {fmt(c['controller_rss_idle'], 'MiB')} "
                   f"/ {fmt(c['controller_rss_sweep'], 'MiB')} | agents, all {c['agents']}: {fmt(c['agents_rss_total'], 'MiB')} | |")
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
    elif cmd == "controller-sweep":
        a = sys.argv[2:]
        print(json.dumps(controller_sweep(a[0], a[1], a[2], a[3], int(a[4]), int(a[5]), a[6], int(a[7]))))
    elif cmd == "table":
        print(table(sys.argv[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
