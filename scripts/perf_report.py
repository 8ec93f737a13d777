#!/usr/bin/env python3
"""keylife's performance report: runs short versions of the criterion benchmarks and prints
the measured figures, the ratios against the baselines measured in the same run, the syncs
the durable benchmarks made, and each target of issue 11 (and those of issue 4 it leaves
standing) with pass / miss.

    python3 scripts/perf_report.py            # the HTTP load test, then the tables
    python3 scripts/perf_report.py --write    # also rewrite docs/performance.md
    python3 scripts/perf_report.py --http [--write]     # only the HTTP load test (benches/http_load.rs)
    python3 scripts/perf_report.py --no-http [--write]  # only the criterion benchmarks
    python3 scripts/perf_report.py --only lifecycle,scale [--write]
        # only these criterion benchmarks (crypto, crypto-ring, lifecycle, scale); with
        # --write, the rows of the others are kept from the report in docs/performance.md

Environment: KEYLIFE_BENCH_SCALE=10000,100000 (store sizes for the scale benchmark; the
stores are built once in target/tmp and reused), KEYLIFE_BENCH_ENGINES=sled,redb. A miss is
a finding, not an error: the script exits 0 unless a benchmark fails to run.
"""

import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRITERION = ROOT / "target" / "criterion"
DOC = ROOT / "docs" / "performance.md"
SHORT = ["--warm-up-time", "0.5", "--measurement-time", "2", "--noplot"]
BENCHES = ["crypto", "crypto-ring", "lifecycle", "scale"]
ENGINES = ["sled", "redb"]


def run(bench, features=None, filters=()):
    """Runs one criterion benchmark; returns its `keylife-syncs:` lines as dicts."""
    cmd = ["cargo", "bench", "--locked", "--bench", bench]
    if features:
        cmd += ["--features", features]
    cmd += ["--"] + SHORT + list(filters)
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    syncs = []
    for line in out.splitlines():
        if line.startswith("keylife-syncs:"):
            syncs.append({k: (int(v) if v.isdigit() else v)
                          for k, v in (kv.split("=", 1) for kv in line.split()[1:])})
    return syncs


def estimates(since):
    """full benchmark id -> mean time per iteration in nanoseconds, for the benchmarks run
    since `since` (a time.time()): figures of earlier runs are never mixed in."""
    out = {}
    for bench in CRITERION.rglob("new/benchmark.json"):
        est_path = bench.parent / "estimates.json"
        if not est_path.exists() or est_path.stat().st_mtime < since:
            continue
        meta = json.loads(bench.read_text())
        est = json.loads(est_path.read_text())
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
    """Runs benches/http_load.rs and returns its table (markdown lines): plain HTTP (the
    targets), then HTTPS and HTTP with --audit-log from the same run."""
    cmd = ["cargo", "bench", "--locked", "--bench", "http_load"]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    sys.stderr.write(out)

    def summary(prefix):
        line = next((l for l in out.splitlines() if l.startswith(prefix + ":")), None)
        return None if line is None else dict(kv.split("=", 1) for kv in line.split()[1:])

    f = summary("http_load")
    rps, cpu = float(f["rps"]), float(f["cpu_us"])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for prefix, label in [
        ("http_load", "HTTP"),
        ("http_load_tls", "HTTPS"),
        ("http_load_audit", "HTTP, --audit-log"),
    ]:
        v = summary(prefix)
        if v is None:
            continue
        rows.append(
            f"| {label}: encrypt + decrypt | {float(v['rps']):.0f} | {v['p50_us']} µs | "
            f"{v['p99_us']} µs | {float(v['cpu_us']):.1f} µs | {v['errors']} |"
        )
        rows.append(
            f"| {label}: baseline (404) | {float(v['baseline_rps']):.0f} | {v['baseline_p50_us']} µs | "
            f"{v['baseline_p99_us']} µs | {float(v['baseline_cpu_us']):.1f} µs | |"
        )
    return [
        f"Measured {when} on {machine()}, with `cargo bench --bench http_load` (release build; "
        f"the server and the clients share the machine): {f['clients']} concurrent signed clients "
        f"on keep-alive connections, {f['pairs']} encrypt/decrypt pairs ({f['requests']} requests) "
        "per variant, each variant on a server process of its own, one after the other. Baseline, "
        "same run and clients: signed requests to a path with no operation (404 from the router), "
        "the cost of HTTP alone.",
        "",
        "| | requests/s | p50 | p99 | server CPU per request | errors |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Ciphertexts that failed to decrypt afterwards (HTTP): {f['undecryptable']} of {f['pairs']}.",
        "",
        "| target (plain HTTP) | result | measured |",
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


class Report:
    """Rows of the tables, each tagged with the benchmark it comes from (so that a partial
    run can keep the other benchmarks' rows of the last report)."""

    def __init__(self):
        self.rows, self.targets, self.syncs = [], [], []

    def row(self, bench, *cells):
        self.rows.append((bench, cells))

    def target(self, bench, issue, name, ok, measured):
        self.targets.append((bench, (issue, name, "pass" if ok else "**miss**", measured)))

    def sync(self, bench, *cells):
        self.syncs.append((bench, cells))


def crypto_rows(r, e):
    for backend in ["aes-gcm", "ring"]:
        bench = "crypto" if backend == "aes-gcm" else "crypto-ring"
        for op in ["encrypt", "decrypt"]:
            for size in [32, 1024, 16384, 1048576]:
                raw = e.get(f"{op}/{backend}/raw/{size}")
                kms = e.get(f"{op}/{backend}/kms/{size}")
                if raw is None or kms is None:
                    continue
                r.row(bench, f"{op} {size} B ({backend})", fmt_time(kms), f"{fmt_time(raw)} raw",
                      f"{raw / kms:.2f} of raw throughput ({gbps(size, kms)} vs {gbps(size, raw)})")
                rg = e.get(f"{op}/{backend}/raw_getrandom/{size}")
                if rg is not None:
                    r.row(bench, f"encrypt {size} B ({backend}) vs raw + getrandom", fmt_time(kms),
                          f"{fmt_time(rg)} raw + getrandom", f"{rg / kms:.2f} of its throughput")
                if backend == "aes-gcm" and op == "encrypt" and size >= 16384:
                    r.target(bench, 11, f"encrypt {size} B ≥ 0.9 of raw aes-gcm", raw / kms >= 0.9,
                             f"{raw / kms:.2f}")
                if backend == "aes-gcm" and op == "decrypt" and size >= 16384:
                    r.target(bench, 4, f"decrypt {size} B ≥ 0.95 of raw aes-gcm", raw / kms >= 0.95,
                             f"{raw / kms:.2f}")
                if backend == "ring" and op == "encrypt" and size == 1048576:
                    r.target(bench, 4, "ring: encrypt 1 MiB ≥ 0.9 of raw ring", raw / kms >= 0.9,
                             f"{raw / kms:.2f}")
        rnd = e.get(f"other/{backend}/fill_from_os_12")
        if rnd is not None:
            r.row(bench, f"fill_from_os, 12 B ({backend} run)", fmt_time(rnd), "", "one getrandom call")
        raw32 = e.get(f"encrypt/{backend}/raw/32")
        kms32 = e.get(f"encrypt/{backend}/kms/32")
        if rnd is not None and raw32 is not None and kms32 is not None:
            bound = raw32 + rnd + 200
            name = "encrypt 32 B ≤ raw + one OS random call + 0.2 µs"
            r.target(bench, 11, name + ("" if backend == "aes-gcm" else f" ({backend})"),
                     kms32 <= bound,
                     f"{fmt_time(kms32)} vs {fmt_time(raw32)} + {fmt_time(rnd)} + 200 ns = "
                     f"{fmt_time(bound)} ({kms32 - raw32 - rnd:.0f} ns over raw + getrandom)")
        for name in ["generate_data_key", "re_encrypt_1KiB"]:
            v = e.get(f"other/{backend}/{name}")
            if v is not None:
                r.row(bench, f"{name} ({backend})", fmt_time(v), "", "")


def lifecycle_rows(r, e, syncs):
    b = "lifecycle"
    append = e.get("baseline/file_append_fdatasync")
    witness = e.get("baseline/witness_pwrite_fdatasync")
    if append is not None:
        r.row(b, "baseline: append a key record to a file + fdatasync", fmt_time(append), "", "")
    if witness is not None:
        r.row(b, "baseline: the witness's sync (60 B pwrite + fdatasync)", fmt_time(witness), "", "")
    mem = e.get("auth/memory_commit")
    mem_auth = e.get("auth/memory_authenticated_commit")
    if mem and mem_auth:
        r.row(b, "authenticated commit of 1 Put over memory", fmt_time(mem_auth),
              f"{fmt_time(mem)} MemoryBackend::commit",
              f"+{fmt_time(mem_auth - mem)}: the MACs and the digest")
    for eng in ENGINES:
        raw = e.get(f"durable/{eng}/engine_commit")
        if raw is None:
            continue
        r.row(b, f"{eng}: engine's durable commit of 1 Put", fmt_time(raw),
              f"{fmt_time(append)} file append + fdatasync" if append else "",
              f"{raw / append:.2f}× file append + fdatasync" if append else "")
        for name, what in [("sled_insert_flush_fdatasync", "by hand: insert + flush + fdatasync"),
                           ("sled_insert_flush", "insert + flush, no fdatasync (issue 4's baseline)")]:
            v = e.get(f"durable/{eng}/{name}")
            if v is not None:
                r.row(b, f"{eng}: {what}", fmt_time(v), f"{fmt_time(raw)} engine commit",
                      f"{v / raw:.2f}× engine commit")
        shape = e.get(f"durable/{eng}/engine_commit_authenticated_shape")
        if shape is not None:
            r.row(b, f"{eng}: engine's durable commit of what the authenticated store writes for 1 Put "
                  "(the Put with its tag + the state record, 2 tables)", fmt_time(shape),
                  f"{fmt_time(raw)} engine commit", f"{shape / raw:.2f}× engine commit")
        cshape = e.get(f"durable/{eng}/engine_commit_create_shape")
        if cshape is not None:
            r.row(b, f"{eng}: engine's durable commit of about what a create_key writes "
                  "(6 Puts in 5 tables, with tags and the state record)", fmt_time(cshape),
                  f"{fmt_time(raw)} engine commit", f"{cshape / raw:.2f}× engine commit")
        pop = e.get(f"durable/{eng}/engine_commit_populated")
        if pop is not None:
            r.row(b, f"{eng}: engine's durable commit of 1 Put (a record rewritten) on a store of 10,000 keys",
                  fmt_time(pop), f"{fmt_time(raw)} engine commit", f"{pop / raw:.2f}× engine commit")
        cpop = e.get(f"durable/{eng}/engine_commit_create_shape_populated")
        if cpop is not None:
            r.row(b, f"{eng}: engine's durable commit of a new key's writes (6 Puts in 5 tables) on a "
                  "store of 10,000 keys", fmt_time(cpop), f"{fmt_time(raw)} engine commit",
                  f"{cpop / raw:.2f}× engine commit")
        auth = e.get(f"durable/{eng}/authenticated_commit")
        if auth is not None:
            extra = f"+{fmt_time(auth - raw)}"
            if witness:
                extra += f"; without the witness's sync {(auth - witness) / raw:.2f}×"
            r.row(b, f"{eng}: authenticated commit of 1 Put", fmt_time(auth),
                  f"{fmt_time(raw)} engine commit", f"{auth / raw:.2f}× ({extra})")
        for name, limit in [("create_key", 2.0), ("enable_disable_key", 1.5), ("rotate_key", 1.5)]:
            v = e.get(f"durable/{eng}/{name}")
            if v is None:
                continue
            w = witness or 0
            ratio = (v - w) / raw
            like = {"create_key": cpop}.get(name)
            alt = f"; against the new key's writes on 10,000 keys {(v - w) / like:.2f}×" if like else ""
            r.row(b, f"{eng}: {name} (durable)", fmt_time(v),
                  f"{fmt_time(raw)} engine commit, {fmt_time(w)} witness sync",
                  f"(mutation − witness) / engine = {ratio:.2f}× ({v / raw:.2f}× with it{alt})")
            r.target(b, 11, f"{eng}: {name} − witness sync ≤ {limit:g}× engine commit", ratio <= limit,
                     f"{ratio:.2f}× ({fmt_time(v)} − {fmt_time(w)}) / {fmt_time(raw)}")
        grown = e.get(f"durable/{eng}/enable_disable_key_after_create")
        if grown is not None:
            keys = next((s["keys"] for s in syncs if s.get("engine") == eng and s.get("bench") == "store_size"), None)
            w = witness or 0
            r.row(b, f"{eng}: enable_disable_key (durable) on a store of {keys or 'thousands of'} keys",
                  fmt_time(grown), f"{fmt_time(raw)} engine commit (store of 1 entry)",
                  f"(mutation − witness) / engine = {(grown - w) / raw:.2f}×"
                  + (f"; against the commit on 10,000 keys {(grown - w) / pop:.2f}×" if pop else ""))
        one = e.get(f"threads/{eng}/enable_disable_x1")
        eight = e.get(f"threads/{eng}/enable_disable_x8")
        if one and eight:
            speedup = 8 * one / eight
            per_group = ""
            for s in syncs:
                if s.get("engine") == eng and s.get("bench") == "enable_disable_x8" and s.get("data_syncs"):
                    per_group = f"; {s['commits'] / s['data_syncs']:.1f} mutations per engine sync"
            r.row(b, f"{eng}: enable/disable, 8 threads", f"{8e9 / eight:.0f}/s", f"{1e9 / one:.0f}/s (1 thread)",
                  f"{speedup:.2f}× one thread{per_group}")
            r.target(b, 11, f"{eng}: 8 threads ≥ 4× one thread's throughput", speedup >= 4, f"{speedup:.2f}×")
    for s in syncs:
        commits = s.get("commits", 0)
        if not commits or s.get("engine") == "memory":
            continue
        per = lambda k: f"{s[k] / commits:.2f}" if k in s else ""
        r.sync(b, s["engine"], s["bench"], str(commits), per("data_syncs"), per("dir_syncs"),
               per("witness_syncs"), per("witness_dir_syncs"))


def scale_rows(r, e):
    b = "scale"
    for full, v in sorted(e.items()):
        if not full.startswith("scale/"):
            continue
        name = full.split("/", 1)[1]
        r.row(b, name, fmt_time(v), "", "")
        m = re.fullmatch(r"open_(\w+)_100000", name)
        if m:
            r.target(b, 4, f"{m.group(1)}: open with 100k keys < 1 s", v < 1e9, fmt_time(v))
        if name.startswith("run_due_nothing_due_100000"):
            r.target(b, 4, "run_due, nothing due, 100k keys < 1 ms", v < 1e6, fmt_time(v))


def previous_rows(text):
    """The rows of the last report in docs/performance.md, by table, each with its benchmark
    (from the hidden column `<!-- b -->`)."""
    kept = {"rows": [], "targets": [], "syncs": []}
    body = text.split("<!-- report:start -->", 1)[-1].split("<!-- report:end -->", 1)[0]
    table = None
    for line in body.splitlines():
        if line.startswith("| benchmark |"):
            table = "rows"
        elif line.startswith("| issue |"):
            table = "targets"
        elif line.startswith("| engine |"):
            table = "syncs"
        elif not line.startswith("|"):
            table = None
        elif table and not line.startswith("|---"):
            m = re.search(r"<!-- (\S+) -->", line)
            if m:
                kept[table].append((m.group(1), line))
    return kept


def render(r, ran, when, kept):
    def rows(table, items, fmt):
        own = [fmt(bench, cells) for bench, cells in items]
        old = [line for bench, line in kept.get(table, []) if bench not in ran]
        return old + own if old else own

    cell = lambda bench, cells: "| " + " | ".join(cells) + f" <!-- {bench} --> |"
    lines = [
        f"Measured {when} on {machine()}, with `python3 scripts/perf_report.py` "
        "(criterion, 0.5 s warm-up and 2 s measurement per benchmark; means)."
        + ("" if set(ran) >= set(BENCHES) else
           f" This run: {', '.join(ran)}; the other rows are from the report before."),
        "",
        "| benchmark | keylife | baseline (same run) | ratio |",
        "|---|---|---|---|",
    ] + rows("rows", r.rows, cell) + [
        "",
        "Syncs per commit (per mutation for `create_key`, `enable_disable_*`), counted over the "
        "warm-up and the measurement:",
        "",
        "| engine | benchmark | commits | engine fdatasyncs | directory fsyncs | witness fdatasyncs | witness directory fsyncs |",
        "|---|---|---|---|---|---|---|",
    ] + rows("syncs", r.syncs, cell) + [
        "",
        "| issue | target | result | measured |",
        "|---|---|---|---|",
    ] + rows("targets", r.targets, lambda bench, t: cell(bench, [str(t[0]), t[1], t[2], t[3]]))
    return "\n".join(lines)


def main():
    write = "--write" in sys.argv
    only = BENCHES
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1].split(",")
        unknown = set(only) - set(BENCHES)
        if unknown:
            sys.exit(f"unknown benchmark(s) {', '.join(sorted(unknown))}: choose among {', '.join(BENCHES)}")
    if "--no-http" not in sys.argv and "--only" not in sys.argv:
        http = "\n".join(http_load())
        print(http)
        if write:
            text = DOC.read_text() if DOC.exists() else "# keylife performance\n"
            DOC.write_text(replace_between(text, "<!-- http:start -->", "<!-- http:end -->", http))
            print(f"wrote {DOC}", file=sys.stderr)
    if "--http" in sys.argv:
        return
    started = time.time()
    syncs = []
    for bench in only:
        if bench == "crypto-ring":
            run("crypto", features="ring")
        else:
            out = run(bench)
            if bench == "lifecycle":
                syncs = out
    e = estimates(started)
    r = Report()
    crypto_rows(r, e)
    lifecycle_rows(r, e, syncs)
    scale_rows(r, e)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = DOC.read_text() if DOC.exists() else "# keylife performance\n"
    kept = previous_rows(text) if only != BENCHES else {}
    table = render(r, only, when, kept)
    print(table)
    if write:
        DOC.write_text(replace_between(text, "<!-- report:start -->", "<!-- report:end -->", table))
        print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
