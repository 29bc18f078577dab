#!/usr/bin/env bash
# Counts the instructions one proxy executes per request, under valgrind's callgrind.
#   benches/instructions.sh [off|sampled] [h1|h2] [requests] [proxy-binary]
# Unlike CPU time, the count does not drift with the VM's speed or with other load on the
# machine (this VM has no hardware counters for `perf stat`), so it is how small before/after
# changes are compared here: run it for both binaries; a few hundred instructions is signal.
# Starts the mesh bench's upstream and OTLP sink, one release proxy under callgrind (tracing off,
# or 100% sampled exporting OTLP/HTTP to the sink), warms it up, zeroes the counters, sends
# `requests` requests (h2load; HTTP/1.1 over 50 connections, or h2c over 10 connections × 5
# streams), and prints instructions per request (user space: the kernel is not counted) and the
# functions with the most instructions of their own. The callgrind file stays in
# target/instructions/ (`callgrind_annotate` reads it).
# Environment (see benches/tools/serve.sh): MESHTRACE_CONTEXT_INFERENCE and
# MESHTRACE_REQUEST_ID_HEADER are passed to the proxy; MESHTRACE_BENCH_APP=forwards-nothing or
# forwards-request-id puts an app behind the proxy that calls the upstream through the same
# proxy's outbound listener (two hops per request, both counted); MESHTRACE_BENCH_SEQUENTIAL=1
# sends one request at a time (one connection) instead of 50 concurrent ones. With an app, the
# proxy's context-source counts (`meshtrace_trace_context_source_total`) are printed too.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/tools/serve.sh
source benches/tools/serve.sh
mode=${1:-off}
protocol=${2:-h1}
requests=${3:-20000}
proxy=${4:-}
case $mode in off | sampled) ;; *) echo "mode: off or sampled" >&2; exit 2 ;; esac
case $protocol in h1 | h2) ;; *) echo "protocol: h1 or h2" >&2; exit 2 ;; esac
for tool in valgrind callgrind_control h2load python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install valgrind nghttp2-client python3 curl)" >&2; exit 1; }
done

out=target/instructions
mkdir -p "$out"
if [ -z "$proxy" ]; then
    cargo build --release -p meshtrace-proxy --bin meshtrace-proxy
    proxy=target/release/meshtrace-proxy
fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

start_upstream_and_sink

proxy_env "$mode"
rm -f "$out"/callgrind.out*
env -i "${env_vars[@]}" valgrind --tool=callgrind --compress-strings=no --compress-pos=no \
    --callgrind-out-file="$out/callgrind.out" "$proxy" >"$out/proxy.log" 2>&1 &
valgrind_pid=$!
pids+=("$valgrind_pid")
for _ in $(seq 150); do curl -sf "http://$admin/ready" >/dev/null 2>&1 && break; sleep 0.2; done

if [ -n "${MESHTRACE_BENCH_SEQUENTIAL:-}" ]; then
    load=(h2load -c1 -m1)
elif [ "$protocol" = h1 ]; then
    load=(h2load -c50)
else
    load=(h2load -c10 -m5)
fi
if [ "$protocol" = h1 ]; then load+=(--h1); fi
"${load[@]}" -n 2000 "http://$inbound/" >/dev/null 2>&1 # warm-up: connections, pools, buffers
callgrind_control -z "$valgrind_pid" >/dev/null
report=$("${load[@]}" -n "$requests" "http://$inbound/" 2>&1)
echo "$report" | grep -E "^requests:|^status codes:"
sleep 1 # let the exporter finish what it holds (it is counted: it is per-request work)
callgrind_control -d "$valgrind_pid" >/dev/null
sleep 1
if [ "${MESHTRACE_BENCH_APP:-none}" != none ]; then
    curl -sf "http://$admin/metrics" | grep '^meshtrace_trace_context_source_total' || true
fi
kill "$valgrind_pid" 2>/dev/null || true
wait "$valgrind_pid" 2>/dev/null || true
succeeded=$(echo "$report" | sed -n 's/.* \([0-9]*\) succeeded.*/\1/p')
[ -n "$succeeded" ] && [ "$succeeded" -gt 0 ] || { echo "no request succeeded" >&2; exit 1; }
python3 benches/tools/callgrind_self.py "$out/callgrind.out.1" "$succeeded" 25 "$mode $protocol"
