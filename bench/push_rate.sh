#!/usr/bin/env bash
# Push rate against the Auth0 simulator at Enterprise limits.
#
#   bench/push_rate.sh [CHANGED] [BURST] [RATE] [LATENCY_MS] [LAYOUT]
#                                             (default 1000 50 16 150 global)
#
# Generates 12,000 users, changes the name of CHANGED more legacy rows after migration (on top
# of the generator's ~4% stranded users), starts the simulator with a bucket of BURST requests
# refilled at RATE per second — LAYOUT `global`: one bucket for the whole Management API, as on
# the Enterprise plan (the export job's requests draw from it too); `per-endpoint`: the
# users-write bucket, as on Essentials and Professional — and LATENCY_MS added to every
# answer, and runs `reconcile --push`. Prints the users pushed, the push's duration, the rate reached (overall,
# and sustained: without the free initial burst) as a fraction of RATE, and the 429s received.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
changed=${1:-1000}
burst=${2:-50}
rate=${3:-16}
latency=${4:-150}
layout=${5:-global}

start_pg
generate 12000 1
sql -c "UPDATE users SET name = name || ' Jr', updated_at = now() WHERE id IN (SELECT id FROM users WHERE id % 7 = 3 ORDER BY id LIMIT $changed)"
start_simulator --layout "$layout" --write-burst "$burst" --write-rate "$rate" --latency-ms "$latency"
write_config "$work/push.toml" export "$simulator_auth0"
DRIFTSYNC_LOG=info ./target/release/driftsync --config "$work/push.toml" reconcile --push --max-push-fraction 1 \
    --format json --output "$work/report.json" 2>"$work/log" || [[ $? == 2 ]]
stats=$(simulator_stats)
python3 - "$work/log" "$work/report.json" "$stats" "$burst" "$rate" <<'PY'
import json, re, sys
log = open(sys.argv[1]).read()
line = [l for l in log.splitlines() if "push finished" in l][-1]
field = lambda name: re.search(rf"{name}=\"?([0-9.]+)", line).group(1)
applied, seconds = int(field("applied")), float(field("seconds"))
summary = json.load(open(sys.argv[2]))["summary"]
stats = json.loads(sys.argv[3])
burst, rate = int(sys.argv[4]), float(sys.argv[5])
overall = applied / seconds
sustained = max(applied - burst, 0) / seconds
print(f"pushed users          {applied} (failed {summary['push_failed']})")
print(f"push duration         {seconds:.1f} s")
print(f"rate, overall         {overall:.2f}/s = {overall / rate:.3f} of {rate:g}/s")
print(f"rate, sustained       {sustained:.2f}/s = {sustained / rate:.3f} of {rate:g}/s (burst of {burst} left out)")
print(f"429 answers           {stats['throttled']} (sent into an empty bucket: {stats['over_limit_attempts']})")
print(f"PATCH requests        {stats['patches']} ({stats['patches_applied']} applied)")
PY
