#!/usr/bin/env bash
# The benchmark of issue 8, in one command:
#
#     scripts/bench.sh            # full matrix, 5 interleaved rounds (~8 min; ~15 with 7 modes)
#     scripts/bench.sh --quick    # 1 round of 1 s windows (~2 min): a smoke run
#
# Builds the examples in release mode, raises the open-files soft limit (the
# idle test holds 1,000 connections on each side), then runs scripts/bench.py,
# which starts echo_server in every dispatch mode `echo_server -h` lists and
# examples/naive_echo as the baseline, drives them with examples/loadgen, and
# prints one markdown report (progress on stderr; a copy and the raw JSON
# under target/bench/). More options: scripts/bench.sh --help.
#
# Needs only the Rust toolchain and python3 (standard library). Traffic stays
# on loopback; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "bench.sh: python3 is needed (standard library only)" >&2; exit 1; }

cargo build --release --examples >&2

# Soft limit up to the hard limit, never above 20000.
want=20000
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then want=$hard; fi
soft=$(ulimit -Sn)
if [ "$soft" = unlimited ] || [ "$soft" -lt "$want" ]; then ulimit -Sn "$want"; fi

exec python3 scripts/bench.py --command "scripts/bench.sh${*:+ $*}" "$@"
