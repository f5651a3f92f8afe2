#!/usr/bin/env python3
"""Side-by-side benchmark of echo_server's dispatch modes against a naive
std::net thread-per-connection echo (examples/naive_echo.rs).

Run it through scripts/bench.sh, which builds the release examples and raises
the open-files limit first. Standard library only (Python 3.8+).

For each test of the matrix, for each round, every server is started fresh
on 127.0.0.1:0 (its first stdout line gives the port), measured with
examples/loadgen (--json --server-pid), and stopped; the servers take turns
within a round, and the turn order rotates between rounds, so machine drift
hits every server alike and shows up in the per-round numbers. A cell reports
the median over rounds. Everything goes to loopback; every process has a
time limit and is killed past it.

Prints one markdown report on stdout (progress goes to stderr) and keeps a
copy, with every raw loadgen JSON line, under target/bench/.
"""

import argparse
import datetime
import json
import os
import platform
import re
import select
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "target" / "release" / "examples"
OUT_DIR = ROOT / "target" / "bench"

# The matrix (issue 8). `persistent`: every client holds one connection for
# the whole run, which sync mode (one connection at a time) cannot serve when
# there is more than one.
TESTS = [
    dict(id="rr1", label="tcp-rr 64 B, C=1", mode="tcp-rr", c=1, m=64),
    dict(id="rr16", label="tcp-rr 64 B, C=16", mode="tcp-rr", c=16, m=64),
    dict(id="rr64", label="tcp-rr 64 B, C=64", mode="tcp-rr", c=64, m=64),
    dict(id="rr256", label="tcp-rr 64 B, C=256", mode="tcp-rr", c=256, m=64),
    dict(id="rr16k", label="tcp-rr 16 KiB, C=16", mode="tcp-rr", c=16, m=16384),
    dict(id="connect", label="tcp-connect 64 B, C=16", mode="tcp-connect", c=16, m=64),
    dict(id="udp", label="udp-rr 64 B, C=16", mode="udp-rr", c=16, m=64, udp=True),
    dict(id="rr4", label="tcp-rr 64 B, C=4 (no idle crowd)", mode="tcp-rr", c=4, m=64),
    dict(id="idle", label="idle K=1000 + tcp-rr 64 B, C=4", mode="idle", c=4, m=64, k=1000),
]
for _t in TESTS:
    _t["persistent"] = _t["mode"] in ("tcp-rr", "idle")

# Modes in the order the table shows them; only those `echo_server -h`
# lists are run, so the script keeps working as modes land.
KNOWN_MODES = ["sync", "threading", "pool", "forking", "prefork", "reactor"]
# Modes that hold one worker (thread or process) per open connection for
# the connection's whole life: they get --workers = every connection the
# test opens (C, plus K idle), or the clients would queue behind each other.
# threading needs no flag (no cap by default). For UDP every mode keeps
# its default (pool: four workers per core).
WORKER_PER_CONNECTION = {"pool", "forking", "prefork"}
# The reactor parks idle connections, so its worker count is about cores,
# not connections. The echo handler never blocks, and on this 2-core
# machine the load generator needs the other core: one worker is the
# event-loop configuration (one loop per free core). With more workers than
# free cores, a worker preempted while it owns connections stalls them for
# a scheduler time slice, which shows as a p99 of milliseconds.
REACTOR_WORKERS = 1

UDP_TIMEOUT_MS = 250  # a datagram not echoed by then counts as lost
TCP_TIMEOUT_MS = 2000  # a round trip slower than this is an error


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def detect_modes():
    """The dispatch modes `echo_server -h` offers, in KNOWN_MODES order."""
    out = subprocess.run(
        [str(EXAMPLES / "echo_server"), "--help"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    found = set()
    short = subprocess.run(
        [str(EXAMPLES / "echo_server"), "-h"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    for line in short.splitlines():
        if "--mode" in line:
            m = re.search(r"possible values: ([^\]]+)\]", line)
            if m:
                found.update(v.strip() for v in m.group(1).split(","))
    # The long form lists them as "- name: ..." under "Possible values:".
    block = re.search(r"--mode <MODE>(.*?)(?:\n\s*--|\Z)", out, re.S)
    if block:
        found.update(re.findall(r"^\s*-\s*([a-z][a-z0-9-]*):", block.group(1), re.M))
    modes = [m for m in KNOWN_MODES if m in found]
    extra = sorted(found - set(KNOWN_MODES))
    return modes + extra


def proc_tree(pid):
    """pid and its live descendants (via /proc/PID/task/*/children)."""
    seen, stack = [], [pid]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                try:
                    with open(f"/proc/{p}/task/{task}/children") as f:
                        stack.extend(int(c) for c in f.read().split())
                except OSError:
                    pass
        except OSError:
            pass
    return seen


def rss_kb(pid):
    """VmRSS of the process tree in KiB (shared pages count once per
    process, so forking/prefork trees are over-counted)."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Server:
    """One echo server process, started on 127.0.0.1:0."""

    def __init__(self, argv, logfile):
        self.argv = [str(a) for a in argv]
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=logfile, start_new_session=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode(errors="replace") if ready else ""
        m = re.match(r"listening on (tcp|udp)://(.+)$", line.strip())
        if not m:
            self.stop()
            raise RuntimeError(f"{shlex.join(self.argv)}: no 'listening on' line (got {line!r})")
        self.addr = m.group(2)
        self.pid = self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # The whole session: a forking server's children too.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc.stdout.close()


def server_argv(name, test):
    udp = ["--udp"] if test.get("udp") else []
    if name == "naive":
        return [EXAMPLES / "naive_echo", "--bind", "127.0.0.1:0", *udp]
    argv = [EXAMPLES / "echo_server", "--bind", "127.0.0.1:0", "--mode", name,
            "--log-level", "warn", "--drain-secs", "1", *udp]
    if name in WORKER_PER_CONNECTION and not test.get("udp"):
        argv += ["--workers", str(test["c"] + test.get("k", 0))]
    if name == "reactor":
        argv += ["--workers", str(REACTOR_WORKERS)]
    return argv


def skip_reason(name, test):
    if name == "sync" and test["persistent"] and (test["c"] > 1 or test.get("k")):
        return "n/a (one connection at a time)"
    if name == "reactor" and test.get("udp"):
        return "n/a (stream sockets only)"
    return None


def machine_busy(interval):
    """Share of the machine's CPU busy over `interval` seconds (/proc/stat)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v) - v[3] - v[4], sum(v)
    b0, t0 = read()
    time.sleep(interval)
    b1, t1 = read()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


class QuietGate:
    """Before each run, waits (bounded) until the machine is nearly idle:
    on a shared 2-core machine another process's build would otherwise
    land in the middle of a measurement. Each wait is at most `per_run`
    seconds and all waits together at most `budget`; after that runs go
    ahead regardless (each run records what other processes used in its
    window, `others_busy_pct`, and the report shows it)."""

    def __init__(self, per_run, budget):
        self.per_run, self.budget, self.waited = per_run, budget, 0.0

    def wait(self):
        t0 = time.monotonic()
        limit = min(self.per_run, self.budget - self.waited)
        if limit <= 0:
            return
        while machine_busy(0.25) > 0.15 and time.monotonic() - t0 < limit:
            time.sleep(0.5)
        self.waited += time.monotonic() - t0


def run_cell(name, test, args, logfile):
    """Starts the server, runs loadgen once, stops the server. Returns the
    loadgen JSON (plus rss_kb for the idle test) or raises."""
    server = Server(server_argv(name, test), logfile)
    try:
        timeout_ms = UDP_TIMEOUT_MS if test.get("udp") else TCP_TIMEOUT_MS
        argv = [EXAMPLES / "loadgen", "--mode", test["mode"], "--addr", server.addr,
                "--connections", test["c"], "--size", test["m"],
                "--duration", args.duration, "--warmup", args.warmup,
                "--server-pid", server.pid, "--timeout-ms", timeout_ms, "--json",
                "--threads", min(args.loadgen_threads, test["c"])]
        if test.get("k"):
            argv += ["--idle", test["k"]]
        argv = [str(a) for a in argv]
        # Bound: warm-up + window + drain + idle-crowd set-up, with margin.
        limit = args.warmup + args.duration + 30
        lg = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=logfile)
        peak_rss = 0
        deadline = time.monotonic() + limit
        while lg.poll() is None and time.monotonic() < deadline:
            if test.get("k"):
                peak_rss = max(peak_rss, rss_kb(server.pid))
            time.sleep(0.2)
        if lg.poll() is None:
            lg.kill()
            lg.wait()
            raise RuntimeError(f"loadgen ran past {limit:.0f} s")
        out = lg.stdout.read().decode(errors="replace").strip().splitlines()
        lg.stdout.close()
        if not out:
            raise RuntimeError(f"loadgen printed nothing (exit {lg.returncode})")
        result = json.loads(out[-1])
        result["server"] = name
        result["test"] = test["id"]
        if test.get("k"):
            result["rss_kb"] = peak_rss
        return result
    finally:
        server.stop()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_int(x):
    return "-" if x is None else f"{x:,.0f}"


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(x, base):
    if x is None or base in (None, 0):
        return "-"
    return f"{x / base:.2f}x"


def summarize(runs):
    """Median figures of one cell's rounds."""
    if not runs:
        return None
    return dict(
        rps=median([r["rps"] for r in runs]),
        cpu=median([r.get("server_cpu_us_per_req") for r in runs]),
        p99=median([r.get("p99_us") for r in runs]),
        lgcpu=median([r.get("loadgen_cpu_us_per_req") for r in runs]),
        others=median([r.get("others_busy_pct") for r in runs]),
        busy=median([r.get("machine_busy_pct") for r in runs]),
        errors=sum(r["errors"] for r in runs),
        lost=sum(r.get("lost", 0) for r in runs),
        rounds=[r["rps"] for r in runs],
        rss=median([r.get("rss_kb") for r in runs]),
        idle_ok=all(r.get("idle_alive_end") in (None, r.get("idle")) for r in runs),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one round of 1 s windows (about 2 minutes): a smoke run, not figures")
    ap.add_argument("--rounds", type=int, help="rounds per cell (default 5; --quick 1)")
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 2; --quick 1)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run (default 0.5)")
    ap.add_argument("--loadgen-threads", type=int, default=2,
                    help="loadgen event-loop threads (default 2, one per core; at most C)")
    ap.add_argument("--quiet-wait", type=float, default=10,
                    help="before each run, wait up to this many seconds for the machine to go idle (default 10)")
    ap.add_argument("--quiet-budget", type=float, default=240,
                    help="total seconds all those waits may take (default 240)")
    ap.add_argument("--tests", help="comma-separated test ids to run: " + ",".join(t["id"] for t in TESTS))
    ap.add_argument("--modes", help="comma-separated modes (default: every mode echo_server lists)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    # Many short rounds rather than a few long ones: on a shared 2-core
    # machine the noise comes in bursts, and the median of five rides them.
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.duration = args.duration or (1.0 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else 0.5

    modes = detect_modes()
    if args.modes:
        wanted = args.modes.split(",")
        modes = [m for m in modes if m in wanted]
    servers = ["naive"] + modes
    tests = TESTS
    if args.tests:
        wanted = args.tests.split(",")
        tests = [t for t in TESTS if t["id"] in wanted]
        if not tests:
            sys.exit(f"bench: no test among {wanted}")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    raw_path = OUT_DIR / f"bench-{stamp}.jsonl"
    md_path = OUT_DIR / f"bench-{stamp}.md"
    log_path = OUT_DIR / f"bench-{stamp}.log"
    logfile = open(log_path, "wb")
    raw = open(raw_path, "w")

    cells = [(t, s) for t in tests for s in servers if not skip_reason(s, t)]
    per_run = args.warmup + args.duration + 1.0
    log(f"bench: servers {servers}; {len(cells) * args.rounds} runs of about {per_run:.1f} s "
        f"(about {len(cells) * args.rounds * per_run / 60:.1f} min); logs in {log_path}")

    results = {}  # (test id, server) -> list of loadgen JSON
    failures = {}  # (test id, server) -> reason
    started = time.monotonic()
    gate = QuietGate(args.quiet_wait, args.quiet_budget)
    # Round-major: every round visits every test and every server, so each
    # cell's samples are spread over the whole run and compare fairly with
    # every other cell's (the idle-crowd ratio divides two tests).
    for rnd in range(args.rounds):
        for test in tests:
            active = [s for s in servers if not skip_reason(s, test)]
            # Rotate who goes first each round.
            order = active[rnd % len(active):] + active[:rnd % len(active)]
            for name in order:
                key = (test["id"], name)
                gate.wait()
                try:
                    r = run_cell(name, test, args, logfile)
                except Exception as e:  # report it in the table, go on
                    failures[key] = str(e)
                    log(f"  {test['label']:<36} {name:<10} round {rnd + 1}: FAILED: {e}")
                    continue
                r["round"] = rnd + 1
                raw.write(json.dumps(r) + "\n")
                raw.flush()
                results.setdefault(key, []).append(r)
                log(f"  {test['label']:<36} {name:<10} round {rnd + 1}: "
                    f"{r['rps']:>10,.0f} req/s  cpu {fmt(r.get('server_cpu_us_per_req'), 2):>6} us/req  "
                    f"p99 {fmt(r.get('p99_us'), 0):>6} us  errors {r['errors']}")

    log("bench: shutdown latency (examples/shutdown_latency)")
    shutdown = None
    try:
        out = subprocess.run(
            [str(EXAMPLES / "shutdown_latency"), "--json", "--rounds", "10" if args.quick else "50"],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout
        shutdown = json.loads(out.strip().splitlines()[-1])
    except Exception as e:
        log(f"bench: shutdown_latency failed: {e}")

    elapsed = time.monotonic() - started
    summary = {k: summarize(v) for k, v in results.items()}

    lines = []
    w = lines.append
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        commit = "?"
    w(f"Benchmark run of {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
      f"commit `{commit or '?'}`")
    w("")
    w(f"- machine: `nproc` = {os.cpu_count()}, kernel `{platform.release()}`, {cpu_model or 'CPU unknown'}")
    w(f"- command: `{args.command or 'scripts/bench.py ' + ' '.join(sys.argv[1:])}`")
    w(f"- {args.rounds} round(s) per cell, {args.warmup:g} s warm-up + {args.duration:g} s window per run, "
      f"loadgen with {args.loadgen_threads} thread(s) (at most C); "
      f"medians over rounds; {elapsed / 60:.1f} min in all, {gate.waited:.0f} s of it waiting for "
      f"other processes to quiet down")
    others = [r.get("others_busy_pct") for rs in results.values() for r in rs
              if r.get("others_busy_pct") is not None]
    if others:
        w(f"- CPU used by other processes during the measured windows (noise): median "
          f"{statistics.median(others):.1f} %, max {max(others):.1f} % of the machine")
    w("- ratios are to the naive baseline (`naive`: std::net thread per connection; "
      "for UDP a single-threaded recv_from/send_to loop) in the same run; "
      "CPU = the server's utime+stime per request (per connection for tcp-connect)")
    w("")
    w("| test | server | req/s | ×naive | server CPU µs/req | ×naive | p99 µs | ×naive | errors | "
      "req/s per round | others' CPU % |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for test in tests:
        base = summary.get((test["id"], "naive"))
        for name in servers:
            key = (test["id"], name)
            reason = skip_reason(name, test)
            if reason:
                w(f"| {test['label']} | {name} | {reason} | | | | | | | | |")
                continue
            s = summary.get(key)
            if s is None:
                w(f"| {test['label']} | {name} | failed: {failures.get(key, '?')[:60]} | | | | | | | | |")
                continue
            errs = str(s["errors"])
            if test.get("udp"):
                errs += f" ({s['lost']} lost)"
            if test.get("k") and not s["idle_ok"]:
                errs += " (idle crowd not all served)"
            rounds = " ".join(f"{x / 1000:.1f}k" for x in s["rounds"])
            b = base or {}
            w(f"| {test['label']} | {name} | {fmt_int(s['rps'])} | {ratio(s['rps'], b.get('rps'))} | "
              f"{fmt(s['cpu'], 2)} | {ratio(s['cpu'], b.get('cpu'))} | {fmt(s['p99'], 0)} | "
              f"{ratio(s['p99'], b.get('p99'))} | {errs} | {rounds} | {fmt(s['others'], 0)} |")
    w("")

    # Side figures.
    w("| extra | " + " | ".join(servers) + " |")
    w("|---|" + "---:|" * len(servers))
    idle_test = next((t for t in tests if t["id"] == "idle"), None)
    if idle_test:
        cells_ = []
        for s in servers:
            rss = (summary.get(("idle", s)) or {}).get("rss")
            cells_.append("n/a" if skip_reason(s, idle_test) else fmt(rss and rss / 1024, 1))
        w("| RSS with 1,000 idle connections (+ C=4 active), MB | " + " | ".join(cells_) + " |")
    if any(t["id"] == "idle" for t in tests) and any(t["id"] == "rr4" for t in tests):
        cells_ = []
        for s in servers:
            a, b = summary.get(("idle", s)), summary.get(("rr4", s))
            cells_.append(ratio(a["rps"], b["rps"]) if a and b else "n/a")
        w("| req/s with the idle crowd ÷ without (C=4) | " + " | ".join(cells_) + " |")
    if shutdown:
        sd = shutdown.get("modes", {})
        w("| idle-server shutdown p50 / max, ms | " + " | ".join(
            f"{sd[s]['p50_ms']:.2f} / {sd[s]['max_ms']:.2f}" if s in sd else "-" for s in servers) + " |")
    lgc = []
    for s in servers:
        xs = [summary[(t["id"], s)]["lgcpu"] / summary[(t["id"], s)]["cpu"]
              for t in tests if (t["id"], s) in summary
              and summary[(t["id"], s)]["lgcpu"] and summary[(t["id"], s)]["cpu"]]
        lgc.append(f"{median(xs):.2f}" if xs else "-")
    w("| loadgen CPU ÷ server CPU (median over tests) | " + " | ".join(lgc) + " |")
    w("")

    # Issue 8's targets, checked.
    best = next((m for m in ("reactor", "pool") if m in servers), None)
    w(f"Targets (issue 8), best mode = `{best}`:")
    w("")
    w("| target | measured | verdict |")
    w("|---|---|---|")

    def fig(tid, srv, field):
        s = summary.get((tid, srv))
        return s and s[field]

    def rel(tid, srv, field):
        a, b = fig(tid, srv, field), fig(tid, "naive", field)
        return a / b if a is not None and b else None

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    for tid in ("rr16", "rr64", "rr256"):
        if not any(t["id"] == tid for t in tests) or not best:
            continue
        label = next(t["label"] for t in tests if t["id"] == tid)
        c, r, p = rel(tid, best, "cpu"), rel(tid, best, "rps"), rel(tid, best, "p99")
        ok = None if None in (c, r, p) else (c <= 0.7 and r >= 1.3 and p <= 1.0)
        w(f"| {label}: {best} CPU/req ≤ 0.7x, req/s ≥ 1.3x, p99 ≤ 1.0x | "
          f"{fmt(c, 2)}x, {fmt(r, 2)}x, {fmt(p, 2)}x | {verdict(ok)} |")
        if "pool" in servers:
            r = rel(tid, "pool", "rps")
            w(f"| {label}: pool req/s ≥ 1.0x | {fmt(r, 2)}x | {verdict(None if r is None else r >= 1.0)} |")
    if any(t["id"] == "connect" for t in tests):
        for srv in dict.fromkeys(m for m in (best, "pool") if m in servers):
            c = rel("connect", srv, "cpu")
            w(f"| tcp-connect C=16: {srv} CPU/connection ≤ 0.6x | {fmt(c, 2)}x | "
              f"{verdict(None if c is None else c <= 0.6)} |")
    if any(t["id"] == "udp" for t in tests):
        for srv, target in (("sync", 0.95), ("pool", 0.8)):
            if srv in servers:
                r = rel("udp", srv, "rps")
                w(f"| udp-rr C=16: {srv} req/s ≥ {target}x naive loop | {fmt(r, 2)}x | "
                  f"{verdict(None if r is None else r >= target)} |")
    if any(t["id"] == "idle" for t in tests) and any(t["id"] == "rr4" for t in tests):
        for srv in [m for m in ("reactor", "pool") if m in servers][:1]:
            a, b = fig("idle", srv, "rps"), fig("rr4", srv, "rps")
            r = a / b if a and b else None
            note = "" if srv == "reactor" else " (target is for reactor; no reactor yet)"
            ok = None if r is None else (r >= 0.95)
            w(f"| idle 1,000 + C=4: {srv} req/s ≥ 1.0x without the crowd, within noise (≥ 0.95){note} | "
              f"{fmt(r, 2)}x | {verdict(ok if srv == 'reactor' else None)} |")
        for srv in [m for m in ("reactor", "pool") if m in servers][:1]:
            rss = fig("idle", srv, "rss")
            note = "" if srv == "reactor" else " (target is for reactor; no reactor yet)"
            w(f"| RSS with 1,000 idle connections: {srv} < 30 MB{note} | {fmt(rss and rss / 1024, 1)} MB | "
              f"{verdict((rss / 1024 < 30) if rss and srv == 'reactor' else None)} |")
    if shutdown:
        worst = max((v["max_ms"] for v in shutdown.get("modes", {}).values()), default=None)
        w(f"| idle-server shutdown < 10 ms (every mode, worst of {shutdown.get('rounds')}) | "
          f"{fmt(worst, 2)} ms | {verdict(None if worst is None else worst < 10)} |")
    w("")
    w(f"Raw loadgen JSON lines: `{raw_path.relative_to(ROOT)}`; server logs: `{log_path.relative_to(ROOT)}`.")

    report = "\n".join(lines) + "\n"
    md_path.write_text(report)
    print(report, end="")
    log(f"bench: done in {elapsed / 60:.1f} min ({gate.waited:.0f} s of it waiting for a quiet machine); "
        f"report saved to {md_path}")
    failed_cells = [k for k in failures if k not in results]
    return 1 if failed_cells else 0


if __name__ == "__main__":
    sys.exit(main())
