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
set -euo pipefail
cd "$(dirname "$0")/.."
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
bench=$(cargo bench -p meshtrace-benches --bench mesh --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bench" ] || { echo "could not build the mesh bench" >&2; exit 1; }

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

"$bench" --bench --serve >"$out/serve.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q "OTLP sink" "$out/serve.out" 2>/dev/null && break; sleep 0.1; done
upstream=$(awk '/^upstream/ {print $2}' "$out/serve.out")
sink=$(awk '/^OTLP sink/ {print $3}' "$out/serve.out")
[ -n "$upstream" ] && [ -n "$sink" ] || { echo "upstream/sink did not start" >&2; exit 1; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
inbound=127.0.0.1:$(port)
admin=127.0.0.1:$(port)
env_vars=(
    MESHTRACE_INBOUND_ADDR="$inbound" MESHTRACE_OUTBOUND_ADDR=127.0.0.1:$(port)
    MESHTRACE_ADMIN_ADDR="$admin" MESHTRACE_INBOUND_TARGET="$upstream" MESHTRACE_LOG=warn
)
if [ "$mode" = sampled ]; then
    env_vars+=(MESHTRACE_SAMPLE_RATE=1 OTEL_EXPORTER_OTLP_ENDPOINT="http://$sink"
        OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)
else
    env_vars+=(MESHTRACE_TRACING=off)
fi
rm -f "$out"/callgrind.out*
env -i "${env_vars[@]}" valgrind --tool=callgrind --compress-strings=no --compress-pos=no \
    --callgrind-out-file="$out/callgrind.out" "$proxy" >"$out/proxy.log" 2>&1 &
valgrind_pid=$!
pids+=("$valgrind_pid")
for _ in $(seq 150); do curl -sf "http://$admin/ready" >/dev/null 2>&1 && break; sleep 0.2; done

if [ "$protocol" = h1 ]; then
    load=(h2load --h1 -c50)
else
    load=(h2load -c10 -m5)
fi
"${load[@]}" -n 2000 "http://$inbound/" >/dev/null 2>&1 # warm-up: connections, pools, buffers
callgrind_control -z "$valgrind_pid" >/dev/null
report=$("${load[@]}" -n "$requests" "http://$inbound/" 2>&1)
echo "$report" | grep -E "^requests:"
sleep 1 # let the exporter finish what it holds (it is counted: it is per-request work)
callgrind_control -d "$valgrind_pid" >/dev/null
sleep 1
kill "$valgrind_pid" 2>/dev/null || true
wait "$valgrind_pid" 2>/dev/null || true
succeeded=$(echo "$report" | sed -n 's/.* \([0-9]*\) succeeded.*/\1/p')
[ -n "$succeeded" ] && [ "$succeeded" -gt 0 ] || { echo "no request succeeded" >&2; exit 1; }
python3 benches/tools/callgrind_self.py "$out/callgrind.out.1" "$succeeded" 25 "$mode $protocol"
