#!/usr/bin/env bash
# Benchmark of a report-only reconcile, from a file and through the Auth0 simulator's export job,
# beside the floors measured on the same data.
#
#   bench/reconcile.sh [USERS] [SEED]        (default 100000 users, seed 1)
#
# Builds the release binary and the data generator, starts a throwaway PostgreSQL cluster
# (as the postgres user when run as root), loads USERS generated users with COPY, writes the
# matching gzip Auth0 export, then prints for one run:
#   - reconcile from the export file (source = "file"): wall time, users per second, peak RSS,
#     and a check that the summary equals the generator's expected mix;
#   - reconcile through a users-export job of the Auth0 simulator (source = "export"): the same
#     figures plus the number of Management API requests it made;
#   - the floors: `psql` copying the mapping query's result to /dev/null, and `gzip -dc` of the
#     export to /dev/null; and the ratio reconcile / max(floors).
# Everything lives in a temporary directory that is removed at the end (BENCH_KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
users=${1:-100000}
seed=${2:-1}

for tool in python3 psql gzip; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install postgresql-client gzip python3)" >&2; exit 1; }
done
pg_bin=$(dirname "$(command -v pg_ctl || ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1)")
[[ -x $pg_bin/initdb ]] || { echo "bench: PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql-15" >&2; exit 1; }

cargo build --release --quiet --bin driftsync --example datagen --example simulator
work=$(mktemp -d /tmp/driftsync-bench.XXXXXX)
chmod 755 "$work"
as_pg() { if [[ $(id -u) == 0 ]]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
cleanup() {
    as_pg "$pg_bin/pg_ctl" stop -D "$work/pg" -m immediate >/dev/null 2>&1 || true
    [[ ${BENCH_KEEP:-0} == 1 ]] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

echo "== generating $users users (seed $seed)"
./target/release/examples/datagen --users "$users" --seed "$seed" --out "$work/data"

mkdir "$work/pg"
[[ $(id -u) == 0 ]] && chown postgres: "$work/pg"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres -E UTF8 --locale=C --no-sync >/dev/null
as_pg "$pg_bin/pg_ctl" start -D "$work/pg" -w -l "$work/pg/log" \
    -o "-p $port -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=256MB" >/dev/null
url="postgres://postgres@127.0.0.1:$port/bench"
psql -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE DATABASE bench"
psql -q -h 127.0.0.1 -p "$port" -U postgres bench -f "$work/data/schema.sql"
psql -q -h 127.0.0.1 -p "$port" -U postgres bench \
    -c "\\copy users (id, email, email_verified, name, given_name, family_name, blocked, metadata, updated_at) FROM '$work/data/legacy.copy'" \
    -c "VACUUM ANALYZE users"

# write_config FILE SOURCE [EXTRA_AUTH0_LINES]
write_config() {
    cat >"$1" <<TOML
[legacy]
url = "$url"
query = "$(cat "$work/data/query.sql")"
[auth0]
connection = "legacy-users"
migrated = "app_metadata.migrated"
${3:-}
[cache]
source = "$2"
file = "$work/data/export.json.gz"
TOML
}
write_config "$work/driftsync.toml" file

measure() { python3 bench/measure.py "$@" 2>&1 >/dev/null | tail -n 1; }
echo "== warm-up (page cache, PostgreSQL buffers)"
measure psql -q -h 127.0.0.1 -p "$port" -U postgres bench -c "\\copy ($(cat "$work/data/query.sql")) TO '/dev/null'" >/dev/null
echo "== measuring"
read -r psql_wall _ _ < <(measure psql -q -h 127.0.0.1 -p "$port" -U postgres bench -c "\\copy ($(cat "$work/data/query.sql")) TO '/dev/null'")
read -r gzip_wall _ _ < <(measure sh -c "gzip -dc '$work/data/export.json.gz' >/dev/null")
read -r wall peak code < <(DRIFTSYNC_LOG=warn measure ./target/release/driftsync --config "$work/driftsync.toml" reconcile --format json --output "$work/report.json")
[[ $code == 0 || $code == 2 ]] || { echo "bench: reconcile failed with exit $code" >&2; exit 1; }

echo "== export source through the simulator"
coproc SIM { exec ./target/release/examples/simulator --users "$work/data/export.json.gz" 2>/dev/null; }
read -r -u "${SIM[0]}" listening
base=${listening#listening on }
printf 'test-secret' >"$work/secret"
write_config "$work/export.toml" export "domain = \"tenant.simulator.local\"
base_url = \"$base\"
client_id = \"driftsync-test\"
client_secret_file = \"$work/secret\""
read -r xwall xpeak xcode < <(DRIFTSYNC_LOG=warn measure ./target/release/driftsync --config "$work/export.toml" reconcile --format json --output "$work/report-export.json")
[[ $xcode == 0 || $xcode == 2 ]] || { echo "bench: export reconcile failed with exit $xcode" >&2; exit 1; }
echo stats >&"${SIM[1]}"
read -r -u "${SIM[0]}" sim_stats
exec {SIM[1]}>&-
wait "$SIM_PID" 2>/dev/null || true

python3 - "$work/report-export.json" "$work/data/expected.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))["summary"]
if summary != json.load(open(sys.argv[2])):
    sys.exit(f"bench: the export-source summary {summary} differs from the expected mix")
PY
python3 - "$work/report.json" "$work/data/expected.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))["summary"]
expected = json.load(open(sys.argv[2]))
if summary != expected:
    sys.exit(f"bench: summary {summary} differs from the expected {expected}")
print("summary matches the generator's expected mix:", {k: v for k, v in summary.items() if v})
PY
python3 - "$users" "$wall" "$peak" "$psql_wall" "$gzip_wall" "$xwall" "$xpeak" "$sim_stats" <<'PY'
import json, sys
users, wall, peak, psql, gz, xwall, xpeak = int(sys.argv[1]), *map(float, sys.argv[2:8])
stats = json.loads(sys.argv[8])
floor = max(psql, gz)
print(f"users                        {users}")
print(f"file:   reconcile wall       {wall:.3f} s   ({users / wall:,.0f} users/s)")
print(f"file:   reconcile peak RSS   {peak / 1024:.1f} MiB")
print(f"export: reconcile wall       {xwall:.3f} s   ({users / xwall:,.0f} users/s; includes the simulated job time)")
print(f"export: reconcile peak RSS   {xpeak / 1024:.1f} MiB")
print(f"export: Management API       {stats['requests']} requests + {stats['token_requests']} token, {stats['downloads']} download, {stats['throttled']} throttled")
print(f"        by endpoint          {json.dumps(stats['by_endpoint'])}")
print(f"floor:  psql copy            {psql:.3f} s")
print(f"floor:  gzip -dc             {gz:.3f} s")
print(f"ratio file reconcile/floor   {wall / floor:.2f}")
PY
