#!/usr/bin/env bash
# Instructions per request of context inference (issue 15), setting by setting, with
# benches/instructions.sh (callgrind, deterministic):
#   benches/tools/context_inference.sh [requests] [proxy-binary]
# For each topology (the proxy alone, as in the mesh bench; a pod whose app forwards nothing,
# 50 requests at a time and one at a time; a pod whose app forwards only x-request-id), each
# protocol (h1, h2) and tracing mode (off, sampled), and each setting:
#   none        MESHTRACE_CONTEXT_INFERENCE=off, MESHTRACE_REQUEST_ID_HEADER=none
#   off         MESHTRACE_CONTEXT_INFERENCE=off (the proxy still adds x-request-id)
#   request-id  MESHTRACE_CONTEXT_INFERENCE=request-id
#   infer       MESHTRACE_CONTEXT_INFERENCE=infer (the default)
# Prints one tab-separated line per run (also appended to target/instructions/context-inference.tsv):
# topology, protocol, mode, setting, instructions per request, context sources counted.
# ~60 runs of 20-60 s each.
set -euo pipefail
cd "$(dirname "$0")/../.."
requests=${1:-20000}
proxy=${2:-target/release/meshtrace-proxy}
[ -x "$proxy" ] || cargo build --release -p meshtrace-proxy --bin meshtrace-proxy
table=target/instructions/context-inference.tsv
mkdir -p target/instructions
topologies=${TOPOLOGIES:-"alone pod-forwards-nothing pod-forwards-nothing-sequential pod-forwards-request-id"}
for topology in $topologies; do
    app=none sequential= n=$requests
    case $topology in
        alone) ;;
        pod-forwards-nothing) app=forwards-nothing ;;
        # One request at a time is slow under callgrind (latency-bound): a quarter as many.
        pod-forwards-nothing-sequential) app=forwards-nothing sequential=1 n=$((requests / 4)) ;;
        pod-forwards-request-id) app=forwards-request-id ;;
        *) echo "unknown topology $topology" >&2; exit 2 ;;
    esac
    for protocol in ${PROTOCOLS:-h1 h2}; do
        for mode in ${MODES:-off sampled}; do
            for setting in ${SETTINGS:-none off request-id infer}; do
                inference=$setting header=x-request-id
                if [ "$setting" = none ]; then inference=off header=none; fi
                run() {
                    MESHTRACE_CONTEXT_INFERENCE=$inference MESHTRACE_REQUEST_ID_HEADER=$header \
                        MESHTRACE_BENCH_APP=$app MESHTRACE_BENCH_SEQUENTIAL=$sequential \
                        benches/instructions.sh "$mode" "$protocol" "$n" "$proxy" 2>&1
                }
                # One retry: on a loaded machine, a start can time out.
                result=$(run) || result=$(run) || { echo "$result" >&2; exit 1; }
                per_request=$(echo "$result" | sed -n 's/.*: \([0-9]*\) instructions per request.*/\1/p')
                sources=$(echo "$result" | sed -n 's/^meshtrace_trace_context_source_total{source="\([a-z_]*\)"} \([1-9][0-9]*\)$/\1=\2/p' | paste -sd, -)
                line=$(printf '%s\t%s\t%s\t%s\t%s\t%s' "$topology" "$protocol" "$mode" "$setting" "$per_request" "${sources:--}")
                echo "$line" | tee -a "$table"
            done
        done
    done
done
