#!/usr/bin/env bash
# Profile `tbg serve` (shadow off) under wrk load with py-spy (from bench/peers/setup).
# Usage: bash bench/perf_profile.sh [seconds] [connections]   -> /tmp/tbg-profile.txt (raw stacks)
# TBG_PIN=1: the proxy alone on CPU 1, upstream and wrk on CPU 0, so that samples are the proxy's own
# CPU (unpinned on 2 cores, a write that wakes wrk lets it preempt the proxy mid-syscall, and py-spy
# counts that wait against the write).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
secs="${1:-8}"; conns="${2:-8}"
pyspy="${TBG_BENCH_PEERS:-$HOME/.cache/tbg-proxy/bench-peers}/tools/bin/py-spy"
tmp=$(mktemp -d)
UP=$(python -c "from reference.launch import free_port; print(free_port())")
PP=$(python -c "from reference.launch import free_port; print(free_port())")
pin0=(); pin1=()
if [ "${TBG_PIN:-0}" = 1 ]; then pin0=(taskset -c 0); pin1=(taskset -c 1); fi
"${pin0[@]}" python -m bench.fake_upstream --port "$UP" & U=$!
printf 'host: 127.0.0.1\nport: %s\nlog_level: WARNING\nupstreams:\n- {name: fake, base_url: "http://127.0.0.1:%s/v1", models: [bench]}\n' "$PP" "$UP" > "$tmp/tbg.yaml"
"${pin1[@]}" tbg serve --config "$tmp/tbg.yaml" ${TBG_SERVE_ARGS:-} 2>"$tmp/tbg.err" & T=$!
trap 'kill $T $U 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PP/healthz" >/dev/null && break; sleep 0.2; done
cat > "$tmp/post.lua" <<'L'
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
L
url="http://127.0.0.1:$PP/v1/chat/completions"
"${pin0[@]}" wrk -t1 -c"$conns" -d2s -s "$tmp/post.lua" "$url" >/dev/null  # warm-up
"$pyspy" record -p "$T" -d "$secs" -r 200 -f raw -o /tmp/tbg-profile.txt &
P=$!
sleep 0.5
"${pin0[@]}" wrk -t1 -c"$conns" -d"${secs}s" -s "$tmp/post.lua" "$url" | grep Requests/sec
wait $P
