#!/usr/bin/env bash
# The mesh load benchmark in one command: installs the load generators it needs (Debian),
# builds the release proxy, then runs `cargo bench --bench mesh`.
#   benches/run.sh            full run (~3-5 minutes on 2 cores)
#   benches/run.sh --quick    short phases, for a smoke check
#   benches/run.sh --out F    write the JSON report to F (default benches/results/mesh.json)
# A first run also builds oha (see below). To profile one proxy by hand: benches/profile.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${missing[*]}" >&2
        apt-get install -y "${missing[@]}" >/dev/null || {
            apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null
        } || echo "could not install ${missing[*]}; their paths are skipped" >&2
    else
        echo "missing ${missing[*]} (apt-get install them); their paths are skipped" >&2
    fi
fi
# oha measures open-loop latency with coordinated-omission correction; without it the latency
# phase falls back to h2load --rps, whose own overhead dominates sub-millisecond latencies.
# Building it is a one-time cost of a few minutes (crates.io); MESHTRACE_BENCH_NO_OHA=1 skips it.
if ! command -v oha >/dev/null && [ ! -x "$HOME/.cargo/bin/oha" ] && [ -z "${MESHTRACE_BENCH_NO_OHA:-}" ]; then
    echo "installing oha (cargo install oha --locked, one time)" >&2
    cargo install oha --locked >/dev/null 2>&1 || echo \
        "could not install oha: open-loop latency uses h2load --rps instead" >&2
fi

cargo build --release -p meshtrace-proxy --bin meshtrace-proxy
exec cargo bench -p meshtrace-benches --bench mesh -- "$@"
