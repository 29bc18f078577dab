# Shared by benches/profile.sh and benches/instructions.sh (source it): the mesh bench's upstream
# and OTLP sink, and the environment of one proxy in front of them. Uses the caller's $out
# directory and `pids` array (killed by the caller's cleanup).

# Builds the mesh bench and starts its upstream and sink (`--serve`), behind an optional command
# prefix such as `taskset -c 0`. Sets $upstream and $sink.
start_upstream_and_sink() {
    local bench
    bench=$(cargo bench -p meshtrace-benches --bench mesh --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
    [ -x "$bench" ] || { echo "could not build the mesh bench" >&2; exit 1; }
    "$@" "$bench" --bench --serve >"$out/serve.out" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do grep -q "OTLP sink" "$out/serve.out" 2>/dev/null && break; sleep 0.1; done
    upstream=$(awk '/^upstream/ {print $2}' "$out/serve.out")
    sink=$(awk '/^OTLP sink/ {print $3}' "$out/serve.out")
    [ -n "$upstream" ] && [ -n "$sink" ] || { echo "upstream/sink did not start" >&2; exit 1; }
}

# Sets $inbound, $admin and the `env_vars` of one proxy in front of the upstream: `off` (tracing
# off) or `sampled` (100% sampled, exporting OTLP/HTTP to the sink).
proxy_env() {
    port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    inbound=127.0.0.1:$(port)
    admin=127.0.0.1:$(port)
    env_vars=(
        MESHTRACE_INBOUND_ADDR="$inbound" MESHTRACE_OUTBOUND_ADDR=127.0.0.1:$(port)
        MESHTRACE_ADMIN_ADDR="$admin" MESHTRACE_INBOUND_TARGET="$upstream" MESHTRACE_LOG=warn
    )
    if [ "$1" = sampled ]; then
        env_vars+=(MESHTRACE_SAMPLE_RATE=1 OTEL_EXPORTER_OTLP_ENDPOINT="http://$sink"
            OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)
    else
        env_vars+=(MESHTRACE_TRACING=off)
    fi
}
