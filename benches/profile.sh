#!/usr/bin/env bash
# Profiles one proxy under load with `perf`, the way the numbers in benches/README.md were found.
#   benches/profile.sh [off|sampled] [h1|h2] [seconds]
# Starts the mesh bench's upstream and OTLP sink (`--bench mesh --serve`, pinned to CPU 0), one
# release proxy pinned to CPU 1 (tracing off, or 100% sampled and exporting), drives it with wrk
# (h1) or h2load (h2) from CPU 0, and records the proxy with `perf record -g`. Prints the load
# generator's summary, the proxy's CPU time per request, and the top of the profile; the full
# profile stays in target/profile/perf.data (`perf report -i ...`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/tools/serve.sh
source benches/tools/serve.sh
mode=${1:-sampled}
protocol=${2:-h1}
secs=${3:-5}
case $mode in off | sampled) ;; *) echo "mode: off or sampled" >&2; exit 2 ;; esac
case $protocol in h1 | h2) ;; *) echo "protocol: h1 or h2" >&2; exit 2 ;; esac
for tool in perf wrk h2load taskset; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install linux-perf wrk nghttp2-client util-linux)" >&2; exit 1; }
done

out=target/profile
mkdir -p "$out"
cargo build --release -p meshtrace-proxy --bin meshtrace-proxy

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

start_upstream_and_sink taskset -c 0

proxy_env "$mode"
env -i "${env_vars[@]}" taskset -c 1 target/release/meshtrace-proxy >"$out/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")
for _ in $(seq 50); do curl -sf "http://$admin/ready" >/dev/null 2>&1 && break; sleep 0.1; done

if [ "$protocol" = h1 ]; then
    load=(wrk -t1 -c50 -d"${secs}s" "http://$inbound/")
else
    load=(h2load -c10 -m5 -D"$secs" "http://$inbound/")
fi
taskset -c 0 "${load[@]}" >/dev/null 2>&1 # warm-up

cpu() { awk '{print $14 + $15}' "/proc/$proxy/stat"; }
before=$(cpu)
perf record -F 4999 -g -o "$out/perf.data" -p "$proxy" -- sleep "$secs" >/dev/null 2>&1 &
perf_pid=$!
report=$(taskset -c 0 "${load[@]}" 2>&1)
after=$(cpu)
wait "$perf_pid" || true

requests=$(echo "$report" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p; s/^requests: \([0-9]*\) total.*/\1/p' | head -1)
echo "$report" | grep -E "Requests/sec|finished in|requests:" || true
ticks=$((after - before))
hz=$(getconf CLK_TCK)
if [ -n "$requests" ] && [ "$requests" -gt 0 ]; then
    echo "proxy CPU: $(awk -v t="$ticks" -v hz="$hz" -v n="$requests" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}') µs per request ($mode, $protocol)"
fi
echo "peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$proxy/status")"
perf report -i "$out/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -40 | cut -c1-150
echo "full profile: perf report -i $out/perf.data"
