#!/usr/bin/env bash
# Profile `tbg serve` (shadow off) under wrk load with py-spy (from bench/peers/setup).
# Usage: bash bench/perf_profile.sh [seconds] [connections]   -> /tmp/tbg-profile.txt (raw stacks)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
secs="${1:-8}"; conns="${2:-8}"
pyspy="${TBG_BENCH_PEERS:-$HOME/.cache/tbg-proxy/bench-peers}/tools/bin/py-spy"
tmp=$(mktemp -d)
UP=$(python -c "from reference.launch import free_port; print(free_port())")
PP=$(python -c "from reference.launch import free_port; print(free_port())")
python -m bench.fake_upstream --port "$UP" & U=$!
printf 'host: 127.0.0.1\nport: %s\nlog_level: WARNING\nupstreams:\n- {name: fake, base_url: "http://127.0.0.1:%s/v1", models: [bench]}\n' "$PP" "$UP" > "$tmp/tbg.yaml"
tbg serve --config "$tmp/tbg.yaml" 2>"$tmp/tbg.err" & T=$!
trap 'kill $T $U 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PP/healthz" >/dev/null && break; sleep 0.2; done
cat > "$tmp/post.lua" <<'L'
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
L
url="http://127.0.0.1:$PP/v1/chat/completions"
wrk -t1 -c"$conns" -d2s -s "$tmp/post.lua" "$url" >/dev/null  # warm-up
"$pyspy" record -p "$T" -d "$secs" -r 200 -f raw -o /tmp/tbg-profile.txt &
P=$!
sleep 0.5
wrk -t1 -c"$conns" -d"${secs}s" -s "$tmp/post.lua" "$url" | grep Requests/sec
wait $P
