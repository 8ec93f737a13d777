#!/usr/bin/env python3
"""keylife's performance report: runs short versions of the criterion benchmarks and prints
the measured figures, the ratios against the baselines measured in the same run, and each
target of issue 4 with pass / miss.

    python3 scripts/perf_report.py            # print the tables
    python3 scripts/perf_report.py --write    # also rewrite docs/performance.md
    python3 scripts/perf_report.py --http [--write]   # only the HTTP load test (benches/http_load.rs)

Environment: KEYLIFE_BENCH_SCALE=10000,100000 (store sizes for the scale benchmark; the
stores are built once in target/tmp and reused). A miss is a finding, not an error: the
script exits 0 unless a benchmark fails to run.
"""

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRITERION = ROOT / "target" / "criterion"
SHORT = ["--warm-up-time", "0.5", "--measurement-time", "2", "--noplot"]


def run(bench, features=None, filters=()):
    cmd = ["cargo", "bench", "--locked", "--bench", bench]
    if features:
        cmd += ["--features", features]
    cmd += ["--"] + SHORT + list(filters)
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def estimates():
    """full benchmark id -> mean time per iteration in nanoseconds (latest run)."""
    out = {}
    for bench in CRITERION.rglob("new/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        out[meta["full_id"]] = est["mean"]["point_estimate"]
    return out


def fmt_time(ns):
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def gbps(size, ns):
    return f"{size / ns:.2f} GB/s"


def machine():
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def http_load():
    """Runs benches/http_load.rs and returns its table (markdown lines)."""
    cmd = ["cargo", "bench", "--locked", "--bench", "http_load"]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    sys.stderr.write(out)
    line = next(l for l in out.splitlines() if l.startswith("http_load:"))
    f = dict(kv.split("=", 1) for kv in line.split()[1:])
    rps, cpu = float(f["rps"]), float(f["cpu_us"])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"Measured {when} on {machine()}, with `cargo bench --bench http_load` (release build; "
        f"the server and the clients share the machine): {f['clients']} concurrent signed clients "
        f"on keep-alive connections, {f['pairs']} encrypt/decrypt pairs ({f['requests']} requests). "
        "Baseline, same run and clients: signed requests to a path with no operation (404 from the "
        "router), the cost of HTTP alone.",
        "",
        "| | requests/s | p50 | p99 | server CPU per request |",
        "|---|---|---|---|---|",
        f"| encrypt + decrypt | {rps:.0f} | {f['p50_us']} µs | {f['p99_us']} µs | {cpu:.1f} µs |",
        f"| baseline (404) | {float(f['baseline_rps']):.0f} | {f['baseline_p50_us']} µs | "
        f"{f['baseline_p99_us']} µs | {float(f['baseline_cpu_us']):.1f} µs |",
        "",
        f"Errors: {f['errors']}; ciphertexts that failed to decrypt afterwards: {f['undecryptable']} "
        f"of {f['pairs']}.",
        "",
        "| target | result | measured |",
        "|---|---|---|",
        f"| ≥ 10,000 requests/s | {'pass' if rps >= 10000 else '**miss**'} | {rps:.0f}/s |",
        f"| ≤ 50 µs server CPU per request | {'pass' if cpu <= 50 else '**miss**'} | {cpu:.1f} µs |",
    ]


def replace_between(text, start, end, body):
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        return f"{before}{start}\n{body}\n{end}{after}"
    return f"{text.rstrip()}\n\n{start}\n{body}\n{end}\n"


def main():
    write = "--write" in sys.argv
    doc = ROOT / "docs" / "performance.md"
    http = "\n".join(http_load())
    print(http)
    if write:
        text = doc.read_text() if doc.exists() else "# keylife performance\n"
        doc.write_text(replace_between(text, "<!-- http:start -->", "<!-- http:end -->", http))
        print(f"wrote {doc}", file=sys.stderr)
    if "--http" in sys.argv:
        return
    run("crypto")
    run("crypto", features="ring")
    run("lifecycle")
    run("scale")
    e = estimates()
    rows, targets = [], []

    def target(name, ok, measured):
        targets.append((name, "pass" if ok else "**miss**", measured))

    for backend in ["aes-gcm", "ring"]:
        for op in ["encrypt", "decrypt"]:
            for size in [32, 1024, 16384, 1048576]:
                raw = e.get(f"{op}/{backend}/raw/{size}")
                kms = e.get(f"{op}/{backend}/kms/{size}")
                if raw is None or kms is None:
                    continue
                rows.append((f"{op} {size} B ({backend})", fmt_time(kms), fmt_time(raw),
                             f"{raw / kms:.2f} of raw throughput ({gbps(size, kms)} vs {gbps(size, raw)})"))
                if backend == "aes-gcm" and size >= 16384:
                    target(f"{op} {size} B ≥ 0.95 of raw aes-gcm", raw / kms >= 0.95, f"{raw / kms:.2f}")
                if backend == "aes-gcm" and op == "encrypt" and size == 32:
                    target("encrypt 32 B ≤ 2× raw aes-gcm time", kms / raw <= 2, f"{kms / raw:.2f}×")
                if backend == "ring" and op == "encrypt" and size == 1048576:
                    target("ring: encrypt 1 MiB ≥ 0.9 of raw ring", raw / kms >= 0.9, f"{raw / kms:.2f}")
        for name in ["generate_data_key", "re_encrypt_1KiB"]:
            v = e.get(f"other/{backend}/{name}")
            if v is not None:
                rows.append((f"{name} ({backend})", fmt_time(v), "", ""))

    raw = e.get("durable/raw_sled_insert_flush")
    for name in ["create_key", "enable_disable_key", "rotate_key"]:
        v = e.get(f"durable/{name}")
        if v is None or raw is None:
            continue
        rows.append((f"{name} (durable)", fmt_time(v), fmt_time(raw), f"{v / raw:.2f}× raw sled insert + flush"))
        target(f"{name} ≤ 1.5× raw sled insert + flush", v / raw <= 1.5, f"{v / raw:.2f}×")
    one = e.get("durable_threads/enable_disable_x1")
    eight = e.get("durable_threads/enable_disable_x8")
    if one and eight:
        speedup = 8 * one / eight
        rows.append(("enable/disable, 8 threads", f"{8e9 / eight:.0f}/s", f"{1e9 / one:.0f}/s (1 thread)", f"{speedup:.2f}× one thread"))
        target("8 threads ≥ 2× one thread's throughput", speedup >= 2, f"{speedup:.2f}×")

    for full, v in sorted(e.items()):
        if not full.startswith("scale/"):
            continue
        name = full.split("/", 1)[1]
        rows.append((name, fmt_time(v), "", ""))
        if name.startswith("open_100000"):
            target("open with 100k keys < 1 s", v < 1e9, fmt_time(v))
        if name.startswith("run_due_nothing_due_100000"):
            target("run_due, nothing due, 100k keys < 1 ms", v < 1e6, fmt_time(v))

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {when} on {machine()}, with `python3 scripts/perf_report.py` "
        "(criterion, 0.5 s warm-up and 2 s measurement per benchmark; means).",
        "",
        "| benchmark | keylife | baseline (same run) | ratio |",
        "|---|---|---|---|",
    ] + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows] + [
        "",
        "| target | result | measured |",
        "|---|---|---|",
    ] + [f"| {a} | {b} | {c} |" for a, b, c in targets]
    table = "\n".join(lines)
    print(table)
    if write:
        text = doc.read_text() if doc.exists() else "# keylife performance\n"
        doc.write_text(replace_between(text, "<!-- report:start -->", "<!-- report:end -->", table))
        print(f"wrote {doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
