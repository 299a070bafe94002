#!/usr/bin/env bash
# Profile `tbg serve` with shadow sampling under wrk load with py-spy (from bench/peers/setup), and
# print the functions whose share of the proxy's event-loop thread grew against a second run at
# sampling 0 % (what sampling costs the primaries' loop; docs/shadow.md).
# Usage: bash bench/shadow_profile.sh [inline|process] [rate] [connections] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
mode="${1:-process}" rate="${2:-0.1}" conns="${3:-8}" secs="${4:-10}"
pyspy="${TBG_BENCH_PEERS:-$HOME/.cache/tbg-proxy/bench-peers}/tools/bin/py-spy"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
profile() {  # $1: sample rate, $2: output file
  local UP PP U T
  UP=$(python -c "from reference.launch import free_port; print(free_port())")
  PP=$(python -c "from reference.launch import free_port; print(free_port())")
  python -m bench.fake_upstream --port "$UP" & U=$!
  printf 'host: 127.0.0.1\nport: %s\nlog_level: WARNING\nupstreams:\n- {name: fake, base_url: "http://127.0.0.1:%s/v1", models: [bench]}\nshadow: {enabled: true, sample_rate: %s, replays: 2, replays_per_minute: 1e9, tokens_per_minute: 1e12}\n' \
    "$PP" "$UP" "$1" > "$tmp/tbg.yaml"
  TBG_SHADOW_WORKER=$mode tbg serve --config "$tmp/tbg.yaml" 2>"$tmp/tbg.err" & T=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PP/healthz" >/dev/null && break; sleep 0.2; done
  cat > "$tmp/post.lua" <<'L'
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
L
  local url="http://127.0.0.1:$PP/v1/chat/completions"
  wrk -t1 -c"$conns" -d2s -s "$tmp/post.lua" "$url" >/dev/null  # warm-up
  "$pyspy" record -p "$T" -d "$secs" -r 250 -f raw -o "$2" >/dev/null 2>&1 &
  local P=$!
  sleep 0.5
  echo "sample rate $1: $(wrk -t1 -c"$conns" -d"${secs}s" -s "$tmp/post.lua" "$url" | grep Requests/sec)"
  wait $P
  kill $T $U 2>/dev/null || true
  wait $T $U 2>/dev/null || true
}
profile 0 "$tmp/base.txt"
profile "$rate" "$tmp/shadow.txt"
python - "$tmp/base.txt" "$tmp/shadow.txt" <<'PY'
import collections, sys

def load(path):  # inclusive share per function, event-loop thread only
    incl, total = collections.Counter(), 0
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or "uvloop/__init__" not in stack and "asyncio/runners" not in stack:
            continue
        total += int(n)
        for f in {x.split(" (")[0] + " (" + x.split("(")[-1].split(":")[0] for x in stack.split(";")}:
            incl[f] += int(n)
    return incl, max(total, 1)

(a, ta), (b, tb) = load(sys.argv[1]), load(sys.argv[2])
print(f"event-loop samples: 0 % {ta}, shadow {tb}; % of the loop's samples, 0 % -> shadow:")
for f in sorted(set(a) | set(b), key=lambda f: a[f] / ta - b[f] / tb)[:25]:
    print(f"{100 * a[f] / ta:5.1f} {100 * b[f] / tb:5.1f}  {f[:110]}")
PY
