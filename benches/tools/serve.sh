# Shared by benches/profile.sh and benches/instructions.sh (source it): the mesh bench's upstream
# and OTLP sink, and the environment of one proxy in front of them. Uses the caller's $out
# directory and `pids` array (killed by the caller's cleanup).
#
# Read from the caller's environment:
# - MESHTRACE_CONTEXT_INFERENCE, MESHTRACE_REQUEST_ID_HEADER: passed to the proxy when set
#   (context inference, issue 15); the proxy's defaults (`infer`, `x-request-id`) otherwise.
# - MESHTRACE_BENCH_APP: without it (or `none`) the proxy's inbound side forwards to the static
#   upstream. `forwards-nothing` or `forwards-request-id` puts an application in the pod's place
#   instead: for each request the proxy's inbound side hands it, the app calls the upstream once
#   through the same proxy's outbound listener (explicit mode), forwarding no header of the
#   request it serves, or only x-request-id. Each request then crosses the proxy twice, inbound
#   (where context inference registers it) and outbound (where it infers a parent).

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Builds the mesh bench and starts its upstream and sink (`--serve`), and the app of
# MESHTRACE_BENCH_APP, behind an optional command prefix such as `taskset -c 0`. Sets $upstream,
# $sink, $outbound (the proxy's outbound listener, chosen here for the app) and $target (what the
# proxy's inbound side forwards to: the upstream or the app).
start_upstream_and_sink() {
    local bench app_args=() app_line
    bench=$(cargo bench -p meshtrace-benches --bench mesh --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
    [ -x "$bench" ] || { echo "could not build the mesh bench" >&2; exit 1; }
    outbound=127.0.0.1:$(port)
    case ${MESHTRACE_BENCH_APP:-none} in
        none) app_line= ;;
        forwards-nothing) app_line="app forwarding nothing" ;;
        forwards-request-id) app_line="app forwarding x-request-id" ;;
        *) echo "MESHTRACE_BENCH_APP: none, forwards-nothing or forwards-request-id" >&2; exit 2 ;;
    esac
    [ -n "$app_line" ] && app_args=(--app-via "$outbound")
    "$@" "$bench" --bench --serve "${app_args[@]}" >"$out/serve.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 300); do grep -q "OTLP sink" "$out/serve.out" 2>/dev/null && break; sleep 0.1; done
    upstream=$(awk '/^upstream/ {print $2}' "$out/serve.out")
    sink=$(awk '/^OTLP sink/ {print $3}' "$out/serve.out")
    [ -n "$upstream" ] && [ -n "$sink" ] || {
        echo "upstream/sink did not start:" >&2
        cat "$out/serve.out" >&2
        exit 1
    }
    target=$upstream
    if [ -n "$app_line" ]; then
        target=$(grep "^$app_line " "$out/serve.out" | awk '{print $NF}')
        [ -n "$target" ] || { echo "the app did not start" >&2; exit 1; }
    fi
}

# Sets $inbound, $admin and the `env_vars` of one proxy in front of $target: `off` (tracing
# off) or `sampled` (100% sampled, exporting OTLP/HTTP to the sink).
proxy_env() {
    inbound=127.0.0.1:$(port)
    admin=127.0.0.1:$(port)
    env_vars=(
        MESHTRACE_INBOUND_ADDR="$inbound" MESHTRACE_OUTBOUND_ADDR="$outbound"
        MESHTRACE_ADMIN_ADDR="$admin" MESHTRACE_INBOUND_TARGET="$target" MESHTRACE_LOG=warn
    )
    if [ "$1" = sampled ]; then
        env_vars+=(MESHTRACE_SAMPLE_RATE=1 OTEL_EXPORTER_OTLP_ENDPOINT="http://$sink"
            OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)
    else
        env_vars+=(MESHTRACE_TRACING=off)
    fi
    local name
    for name in MESHTRACE_CONTEXT_INFERENCE MESHTRACE_REQUEST_ID_HEADER MESHTRACE_HTTP1_CODEC; do
        if [ -n "${!name:-}" ]; then env_vars+=("$name=${!name}"); fi
    done
}
