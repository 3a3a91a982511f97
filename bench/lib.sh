# Shared parts of the benchmark scripts; `source` it from a script in bench/.
# Provides: a temporary work dir ($work, removed on exit unless BENCH_KEEP=1), a throwaway
# PostgreSQL cluster (start_pg → $url, $port), the generated data set (generate USERS SEED),
# the Auth0 simulator as a coprocess (start_simulator ARGS… → $base; simulator_stats),
# configuration files (write_config FILE SOURCE [EXTRA_AUTH0_LINES]) and measure CMD… which
# prints "wall_seconds peak_rss_kib exit_code".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in python3 psql gzip; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install postgresql-client gzip python3)" >&2; exit 1; }
done
pg_bin=$(dirname "$(command -v pg_ctl || ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1)")
[[ -x $pg_bin/initdb ]] || { echo "bench: PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql-15" >&2; exit 1; }

cargo build --release --quiet --bin driftsync --bin datagen --bin simulator
work=$(mktemp -d /tmp/driftsync-bench.XXXXXX)
chmod 755 "$work"
as_pg() { if [[ $(id -u) == 0 ]]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
cleanup() {
    if [[ -n ${SIM_PID:-} ]]; then kill "$SIM_PID" 2>/dev/null || true; fi
    as_pg "$pg_bin/pg_ctl" stop -D "$work/pg" -m immediate >/dev/null 2>&1 || true
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

start_pg() {
    mkdir "$work/pg"
    [[ $(id -u) != 0 ]] || chown postgres: "$work/pg"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres -E UTF8 --locale=C --no-sync >/dev/null
    as_pg "$pg_bin/pg_ctl" start -D "$work/pg" -w -l "$work/pg/log" \
        -o "-p $port -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=256MB" >/dev/null
    url="postgres://postgres@127.0.0.1:$port/bench"
    psql -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE DATABASE bench"
}

sql() { psql -q -h 127.0.0.1 -p "$port" -U postgres bench "$@"; }

# generate USERS SEED [PROFILE]: the data set in $work/data (PROFILE lean, the default, or
# realistic), loaded into the database.
generate() {
    ./target/release/datagen --users "$1" --seed "$2" --profile "${3:-lean}" --out "$work/data"
    sql -f "$work/data/schema.sql"
    sql -c "\\copy users $(cat "$work/data/copy_columns.txt") FROM '$work/data/legacy.copy'" \
        -c "VACUUM ANALYZE users"
}

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
[state]
path = "$work/state.db"
TOML
}

# start_simulator [SIMULATOR ARGS…]: serves the export's users; sets $base.
start_simulator() {
    coproc SIM { exec ./target/release/simulator --users "$work/data/export.json.gz" "$@" 2>/dev/null; }
    local listening
    read -r -u "${SIM[0]}" listening
    base=${listening#listening on }
    printf 'test-secret' >"$work/secret"
    simulator_auth0="domain = \"tenant.simulator.local\"
base_url = \"$base\"
client_id = \"driftsync-test\"
client_secret_file = \"$work/secret\""
}

# simulator_stats: one JSON line of the simulator's counters.
simulator_stats() {
    echo stats >&"${SIM[1]}"
    local line
    read -r -u "${SIM[0]}" line
    echo "$line"
}

measure() { python3 bench/measure.py "$@" 2>&1 >/dev/null | tail -n 1; }

# peer_python: a Python with psycopg for the hand-written peer (bench/peer.py), in a virtual
# environment under target/ that this installs from PyPI the first time.
peer_python() {
    local venv=target/bench-venv
    if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import psycopg' 2>/dev/null; then
        python3 -m venv "$venv" >&2 || { echo "bench: cannot create $venv (install python3-venv)" >&2; return 1; }
        "$venv/bin/pip" install --quiet 'psycopg[binary]>=3.1,<4' >&2 || { echo "bench: cannot install psycopg from PyPI" >&2; return 1; }
    fi
    echo "$venv/bin/python"
}
