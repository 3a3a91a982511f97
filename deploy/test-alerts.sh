#!/usr/bin/env bash
# Checks driftsync's Prometheus alert rules and runs their unit tests with promtool.
#
#   deploy/test-alerts.sh            (from any directory)
#   PROMTOOL=/path/to/promtool deploy/test-alerts.sh
#
# Without promtool on PATH, as root on a Debian-like system it installs Debian's
# `prometheus` package (which ships /usr/bin/promtool) and makes sure the package leaves no
# Prometheus server running. Otherwise it fails and says what to install: it never skips.
# The last line is `alerts: N passed, M failed`, N and M counting the test groups of
# deploy/prometheus/driftsync.rules.test.yml, each run on its own; the exit status is
# non-zero on any failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RULES=deploy/prometheus/driftsync.rules.yml
TESTS=deploy/prometheus/driftsync.rules.test.yml

find_promtool() {
    if [[ -n "${PROMTOOL:-}" ]]; then
        [[ -x "$PROMTOOL" ]] && { echo "$PROMTOOL"; return; }
        echo "PROMTOOL=$PROMTOOL is not an executable file" >&2
        return
    fi
    command -v promtool && return
    [[ -x /usr/bin/promtool ]] && echo /usr/bin/promtool
    return 0
}

prometheus_pids() {
    # The pids of running Prometheus servers (exact process name), one per line.
    pgrep -x prometheus || true
}

install_promtool() {
    local before after pid started=$SECONDS made_policy=""
    echo "promtool not found: installing Debian's prometheus package (it ships promtool)" >&2
    before=$(prometheus_pids)
    # Keep the package's postinst from starting a server: invoke-rc.d obeys policy-rc.d
    # (exit 101 = action forbidden). Only when the system has none; removed afterwards.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -qq || echo "apt-get update failed" >&2
    # A postinst that fails for want of an init system still leaves promtool in place:
    # what counts is /usr/bin/promtool afterwards.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
        >/dev/null || echo "apt-get install prometheus reported an error" >&2
    if [[ -n "$made_policy" ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    # Stop a server that the installation started anyway (only those that were not running
    # before), by pid.
    after=$(prometheus_pids)
    for pid in $after; do
        if ! grep -qx "$pid" <<<"$before"; then
            echo "stopping the prometheus server (pid $pid) that the package started" >&2
            kill "$pid" 2>/dev/null || true
        fi
    done
    echo "installing prometheus took $((SECONDS - started)) s" >&2
}

PROMTOOL_BIN=$(find_promtool)
if [[ -z "$PROMTOOL_BIN" && -z "${PROMTOOL:-}" && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    install_promtool
    PROMTOOL_BIN=$(find_promtool)
fi
if [[ -z "$PROMTOOL_BIN" ]]; then
    echo "error: promtool is needed to test the alert rules and was not found." >&2
    echo "Install it: Debian/Ubuntu 'apt-get install prometheus' (as root), or put promtool" >&2
    echo "from a Prometheus release on PATH, or set PROMTOOL=/path/to/promtool." >&2
    echo "alerts: 0 passed, 1 failed"
    exit 1
fi
echo "using $("$PROMTOOL_BIN" --version 2>&1 | head -n1) ($PROMTOOL_BIN)"

for file in "$RULES" "$TESTS"; do
    if [[ ! -f "$file" ]]; then
        echo "error: $file is missing" >&2
        echo "alerts: 0 passed, 1 failed"
        exit 1
    fi
done

passed=0
failed=0
status=0

echo "== promtool check rules $RULES"
if ! "$PROMTOOL_BIN" check rules "$RULES"; then
    status=1
    failed=$((failed + 1))
fi

# Every alert of the rules file must be tested.
for alert in $(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' "$RULES"); do
    if ! grep -q "alertname: *$alert *\$" "$TESTS"; then
        echo "FAILED: alert $alert has no test in $TESTS" >&2
        status=1
        failed=$((failed + 1))
    fi
done

echo "== promtool test rules $TESTS"
whole_failed=""
if ! "$PROMTOOL_BIN" test rules "$TESTS"; then
    status=1
    whole_failed=1
fi

# Count: each test group (an item of `tests:`, starting with a line `  - interval:`) is run
# again on its own, so that the count comes from promtool's own verdicts.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rules_abs="$PWD/$RULES"
awk -v dir="$work" -v rules="$rules_abs" '
    BEGIN { n = 0; header = "rule_files:\n  - " rules "\n" }
    /^evaluation_interval:/ { header = header $0 "\n"; next }
    /^tests:/ { intests = 1; next }
    intests && /^  - interval:/ { n++; file = sprintf("%s/group-%03d.yml", dir, n);
        printf "%stests:\n", header > file }
    intests && n > 0 { print >> file }
' "$TESTS"
groups=$(find "$work" -name 'group-*.yml' | wc -l)
if [[ "$groups" -eq 0 ]]; then
    echo "FAILED: no test group found in $TESTS" >&2
    status=1
    failed=$((failed + 1))
fi
for group in "$work"/group-*.yml; do
    [[ -e "$group" ]] || continue
    if "$PROMTOOL_BIN" test rules "$group" >"$group.out" 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        status=1
        echo "FAILED: test group $(basename "$group" .yml) of $TESTS:" >&2
        cat "$group.out" >&2
    fi
done

# The whole file failed though every group passed alone: still a failure.
if [[ -n "$whole_failed" && "$failed" -eq 0 ]]; then
    failed=1
fi
echo "alerts: $passed passed, $failed failed"
exit "$status"
