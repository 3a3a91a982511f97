#!/usr/bin/env bash
# Endurance: the daemon on short full and changes schedules against the Auth0 simulator, for a
# while, with legacy edits and Prometheus-like scraping.
#
#   bench/soak.sh                    (SOAK_SECONDS=600 SOAK_USERS=5000 SOAK_CHANGES=1 SOAK_FULL=15)
#
# Generates SOAK_USERS realistic users (bench/lib.sh: a throwaway PostgreSQL, the simulator
# serving the export), starts `driftsync daemon` with pushing on, a changes run every
# SOAK_CHANGES seconds and a full run (users-export job) every SOAK_FULL seconds, and runs
# bench/soak.py for SOAK_SECONDS: /metrics scraped 20 times a second, RSS and open file
# descriptors sampled every second, and, after the first full run, a legacy user renamed every
# two changes periods, timed until Auth0 shows the new name. SOAK_LOG sets the daemon's log
# filter (default warn; the log is kept with BENCH_KEEP=1). Prints RSS and descriptors over time, the scrape latency
# percentiles, the edits' delays, the runs by outcome, and each target met or not:
#   RSS after warm-up (SOAK_WARMUP seconds, default 120) grows by at most 5 MB, compared at rest
#   (no run in flight) between the first and the last minute, with the trend in MB/hour beside;
#   descriptors at rest flat; every run succeeds; scrape p99 at most 50 ms; every edit pushed
#   within one changes period (plus the run's own duration: 2 s); at least 1,000 runs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
seconds=${SOAK_SECONDS:-600}
users=${SOAK_USERS:-5000}
changes=${SOAK_CHANGES:-1}
full=${SOAK_FULL:-15}

echo "== generating $users users (realistic profiles)"
start_pg
generate "$users" 1 realistic
start_simulator
python=$(peer_python) || exit 1
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/soak.toml" <<TOML
[legacy]
url = "$url"
query = "$(cat "$work/data/query.sql")"
[auth0]
$simulator_auth0
connection = "legacy-users"
migrated = "app_metadata.migrated"
[cache]
source = "export"
[reconcile]
push = true
max_push_fraction = 1.0
[schedule]
full = "*/$full * * * * *"
changes = "*/$changes * * * * *"
[metrics]
listen = "127.0.0.1:$metrics_port"
[state]
path = "$work/state.db"
TOML
chmod 600 "$work/soak.toml"

echo "== daemon for $seconds s (changes every ${changes}s, full every ${full}s)"
DRIFTSYNC_LOG=${SOAK_LOG:-warn} ./target/release/driftsync --config "$work/soak.toml" daemon 2>"$work/daemon.log" &
daemon=$!
# lib.sh's cleanup (PostgreSQL, the simulator, the work directory) still runs after the daemon.
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null; cleanup' EXIT
for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$metrics_port/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
"$python" bench/soak.py "$daemon" "http://127.0.0.1:$metrics_port/metrics" "$url" "$base" "$seconds" "$changes" >"$work/soak.json" || {
    echo "bench: the soak driver failed" >&2
    exit 1
}
kill -TERM "$daemon"
wait "$daemon"
code=$?
trap cleanup EXIT

python3 - "$work/soak.json" "$changes" "$code" "$work/daemon.log" "${SOAK_WARMUP:-120}" <<'PY'
import json, statistics, sys
result, period, code = json.load(open(sys.argv[1])), float(sys.argv[2]), int(sys.argv[3])
warmup = float(sys.argv[5])
samples = result["samples"]
warm = [s for s in samples if s[0] >= warmup] or samples
fd_values = [s[2] for s in warm]
# At rest: no run in flight, told by the descriptors (a run holds a database connection and
# HTTP connections more). RSS is compared at rest, so that a run's own buffers do not count.
fds_at_rest = min(fd_values)
at_rest = [s for s in warm if s[2] == fds_at_rest] or warm
window = [s for s in at_rest if s[0] < at_rest[0][0] + 60]
end_window = [s for s in at_rest if s[0] > at_rest[-1][0] - 60]
first = statistics.median(s[1] for s in window)
last = statistics.median(s[1] for s in end_window)
growth_mb = (last - first) * 1024 / 1e6
# The trend over the whole soak after warm-up (least squares over the samples at rest).
ts, rs = [s[0] for s in at_rest], [s[1] * 1024 / 1e6 for s in at_rest]
mean_t, mean_r = sum(ts) / len(ts), sum(rs) / len(rs)
spread = sum((t - mean_t) ** 2 for t in ts)
slope_per_hour = (sum((t - mean_t) * (r - mean_r) for t, r in zip(ts, rs)) / spread * 3600) if spread else 0.0
# Descriptors at rest: the fewest in each 10 s window (a run in flight holds a few more).
rest = [min(s[2] for s in warm[i:i + 10]) for i in range(0, len(warm), 10)]
runs = result["runs"]
total = sum(runs.values())
bad = {k: v for k, v in runs.items() if 'outcome="success"' not in k and 'outcome="skipped"' not in k and v}
edits = result["edits"]
missed = [d for d in edits if d is None or d > period + 2]
print("time_s  rss_mib  fds")
step = max(1, len(samples) // 12)
for s in samples[::step] + samples[-1:]:
    print(f"{s[0]:>6}  {s[1] / 1024:>7.1f}  {s[2]:>3}")
print(f"runs                 {int(total)} ({json.dumps(runs)})")
print(f"scrapes              {result['scrapes']}, latency p50 {result['scrape_ms']['p50']} ms, p99 {result['scrape_ms']['p99']} ms, max {result['scrape_ms']['max']} ms")
delays = [d for d in edits if d is not None]
print(f"legacy edits         {len(edits)}, pushed after {min(delays, default=0):.2f}–{max(delays, default=0):.2f} s (median {sorted(delays)[len(delays) // 2] if delays else 0:.2f} s)")
print(f"daemon exit          {code} after SIGTERM")
print(f"RSS at rest          {len(at_rest)} samples after the {warmup:.0f} s warm-up: median {first * 1024 / 1e6:.1f} MB in its first minute, {last * 1024 / 1e6:.1f} MB in the last; trend {slope_per_hour:+.2f} MB/hour")
checks = [
    (f"RSS after warm-up grows by at most 5 MB: {growth_mb:+.1f} MB (at rest, first minute to last)", growth_mb <= 5),
    (f"file descriptors flat at rest: {rest[0]} after warm-up, {rest[-1]} at the end (runs in flight: up to {max(fd_values)})", rest[-1] <= rest[0] + 2),
    (f"every run succeeds: {len(bad)} other outcomes {bad}", not bad),
    (f"scrape p99 at most 50 ms: {result['scrape_ms']['p99']} ms", (result['scrape_ms']['p99'] or 0) <= 50),
    (f"every edit pushed within one changes period (+2 s): {len(missed)} late", not missed),
]
checks.append((f"the figure from at least 1,000 runs: {int(total)}", total >= 1000))
for text, ok in checks:
    print(f"{'met    ' if ok else 'NOT MET'}  {text}")
if result["failures"]:
    print("failures:", result["failures"])
PY
