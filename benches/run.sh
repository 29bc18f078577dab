#!/usr/bin/env bash
# The mesh load benchmark in one command: installs the load generators it needs (Debian),
# builds the release proxy, then runs `cargo bench --bench mesh`.
#   benches/run.sh            full run (~3-5 minutes on 2 cores)
#   benches/run.sh --quick    short phases, for a smoke check
#   benches/run.sh --out F    write the JSON report to F (default benches/results/mesh.json)
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
command -v oha >/dev/null || [ -x "$HOME/.cargo/bin/oha" ] || echo \
    "oha not installed: open-loop latency uses h2load --rps (install oha with \`cargo install oha --locked\` for coordinated-omission-corrected latency)" >&2

cargo build --release -p meshtrace-proxy --bin meshtrace-proxy
exec cargo bench -p meshtrace-benches --bench mesh -- "$@"
