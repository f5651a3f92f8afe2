#!/usr/bin/env bash
# The keep-alive benchmark (issue 7): the chatbot with 4 reactor workers,
# 4 active clients chatting at a steady rate, with and without a crowd of
# 10 000 idle clients. Reports the active clients' reply latency and the
# server's memory with the crowd. Traffic stays on 127.0.0.1.
#
#   scripts/chat_bench.sh                 # 3 rounds x 10 s per cell, ~3 min
#   ROUNDS=1 DURATION=3 scripts/chat_bench.sh   # a quick look
#
# Two kinds of traffic, interleaved with and without the crowd so machine
# drift shows in both:
#   chat  lines the bot answers and the room fans out to every member, the
#         idle crowd included (so each line costs 10 000 writes);
#   nick  /nick commands, answered but not fanned out: the cost of parking
#         the crowd alone.
# Each cell is the median over the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RATE=${RATE:-20}
IDLE=${IDLE:-10000}
WORKERS=${WORKERS:-4}

# 10 000 idle clients and the server each need that many descriptors: raise
# the soft limit to the hard limit (never above it).
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE + 100)) ]; then
    echo "chat_bench: the open-files limit ($(ulimit -n)) is below $((IDLE + 100)); lower IDLE" >&2
    exit 1
fi

cargo build --release --quiet --example chatbot --example chat_load
BIN=target/release/examples
OUT=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$OUT"' EXIT

"$BIN/chatbot" --bind 127.0.0.1:0 --workers "$WORKERS" --log-level warn >"$OUT/server.out" 2>"$OUT/server.err" &
SERVER=$!
for _ in $(seq 200); do
    [ -s "$OUT/server.out" ] && break
    sleep 0.05
done
ADDR=$(head -1 "$OUT/server.out" | sed -n 's|^listening on tcp://||p')
[ -n "$ADDR" ] || { echo "chat_bench: the chatbot did not start" >&2; cat "$OUT/server.err" >&2; exit 1; }

echo "chatbot on $ADDR (pid $SERVER, $WORKERS workers); $ROUNDS round(s) of ${DURATION}s per cell, $RATE lines/s per active client" >&2
for kind in chat nick; do
    for round in $(seq "$ROUNDS"); do
        for idle in 0 "$IDLE"; do
            "$BIN/chat_load" --addr "$ADDR" --kind "$kind" --idle "$idle" --rate "$RATE" \
                --duration "$DURATION" --warmup "$WARMUP" --server-pid "$SERVER" --json \
                | tee -a "$OUT/results.jsonl" >&2
        done
    done
done

kill -TERM "$SERVER"
wait "$SERVER" || { echo "chat_bench: the chatbot did not exit cleanly" >&2; exit 1; }

python3 - "$OUT/results.jsonl" "$IDLE" <<'PY'
import json, statistics, sys, platform, os, datetime
rows = [json.loads(l) for l in open(sys.argv[1])]
crowd = int(sys.argv[2])
print(f"chat benchmark, {datetime.date.today()}, nproc={os.cpu_count()}, kernel {platform.release()}")
print()
print("| traffic | idle crowd | p50 reply | p99 reply | p99 vs no crowd | server RSS | idle still open |")
print("|---|---|---|---|---|---|---|")
for kind in ("Chat", "Nick"):
    base = None
    for idle in (0, crowd):
        cell = [r for r in rows if r["kind"] == kind and r["idle"] == idle]
        p50 = statistics.median(r["p50_us"] for r in cell)
        p99 = statistics.median(r["p99_us"] for r in cell)
        rss = max(r["server_rss_kib"] or 0 for r in cell) / 1024
        still = min(r["idle_open"] for r in cell)
        if idle == 0:
            base = p99
        ratio = "1.00x" if idle == 0 else f"{p99 / base:.2f}x"
        print(f"| {kind.lower()} | {idle} | {p50:.0f} us | {p99:.0f} us | {ratio} | {rss:.1f} MiB | {still} |")
PY
