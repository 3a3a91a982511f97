#!/usr/bin/env bash
# Checks the systemd units in this folder without installing or starting anything:
#   1. `systemd-analyze verify` on all three units must print nothing (a parse warning such as
#      "Unknown key" still exits 0, so any output counts as a failure);
#   2. `systemd-analyze security --offline=true` rates each service's exposure; above 2.0 fails;
#   3. the timer's OnCalendar= must parse (`systemd-analyze calendar`).
#
# How: `verify` checks that every Exec*= command exists, and /usr/bin/driftsync is not
# installed on a build machine (the Debian package installs it). Rather than editing a copy of the units, the script builds a
# throw-away root: the units byte for byte in <root>/etc/systemd/system, the distribution's
# units (targets the units depend on) in <root>/usr/lib/systemd/system, a copy of each
# referenced command that exists on this machine (/bin/kill, ...) and, for the driftsync binary
# only, an executable stub when it is not installed. `--root=` then verifies the units exactly
# as shipped, with no dependence on the host's /etc/systemd. systemd (PID 1) is not needed:
# this works in a container.
#
# Needs systemd-analyze from systemd >= 250 (--offline). When it is missing and this runs as
# root with apt-get, it installs Debian's `systemd` package (without recommends; that package
# does not replace /sbin/init, which is systemd-sysv's, and its scripts start nothing when
# systemd is not PID 1). Set DRIFTSYNC_VERIFY_NO_INSTALL=1 to fail instead.
#
# Usage: systemd/verify.sh   (from any directory)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
units=(driftsync.service driftsync-reconcile.service driftsync-reconcile.timer)
services=(driftsync.service driftsync-reconcile.service)
max_exposure=2.0
# The one command that may be missing here: the binary these units run.
driftsync_bin=/usr/bin/driftsync

die() {
    echo "verify.sh: $*" >&2
    exit 1
}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [[ ${DRIFTSYNC_VERIFY_NO_INSTALL:-0} != 1 && $(id -u) -eq 0 ]] \
        && command -v apt-get >/dev/null 2>&1; then
        echo "verify.sh: systemd-analyze is missing: installing Debian's systemd package" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
    else
        die "systemd-analyze (systemd >= 250) is needed: apt-get install systemd"
    fi
fi

version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
[[ $version =~ ^[0-9]+$ ]] || die "cannot read the systemd version from: $(systemd-analyze --version | head -n 1)"
((version >= 250)) || die "systemd $version: 'systemd-analyze security --offline' needs systemd >= 250"

for unit in "${units[@]}"; do
    [[ -f $here/$unit ]] || die "missing unit file $here/$unit"
done

root=$(mktemp -d "${TMPDIR:-/tmp}/driftsync-units.XXXXXX")
trap 'rm -rf "$root"' EXIT

# The host's merged-/usr symlinks (/bin -> usr/bin ...), so that /bin/kill resolves as it does
# here.
for dir in bin sbin lib lib64; do
    if [[ -L /$dir ]]; then
        target=$(readlink "/$dir")
        mkdir -p "$root/${target#/}"
        ln -s "$target" "$root/$dir"
    fi
done

# The distribution's units: targets and services ours are ordered after or wanted by.
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
[[ -d /usr/lib/systemd/system ]] || die "no /usr/lib/systemd/system on this machine"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
if [[ ! -L /lib && -d /lib/systemd/system ]]; then
    mkdir -p "$root/lib/systemd"
    cp -a /lib/systemd/system "$root/lib/systemd/"
fi
for unit in "${units[@]}"; do
    cp "$here/$unit" "$root/etc/systemd/system/$unit"
done

# Every command an Exec*= line runs (after the optional -@:+! prefixes).
mapfile -t commands < <(
    cd "$here" &&
        sed -nE 's/^Exec[A-Za-z]*=[-@:+!]*([^[:space:]]+).*/\1/p' "${units[@]}" | sort -u
)
((${#commands[@]} > 0)) || die "no Exec*= line found in the units"
stubbed=""
for command in "${commands[@]}"; do
    [[ $command == /* ]] || die "Exec*= command '$command' is not an absolute path"
    mkdir -p "$root$(dirname "$command")"
    if [[ -x $command && -f $command ]]; then
        cp -L "$command" "$root$command"
    elif [[ $command == "$driftsync_bin" ]]; then
        printf '#!/bin/sh\nexit 0\n' >"$root$command"
        chmod 0755 "$root$command"
        stubbed=" ($command is not installed here: verified against a stub)"
    else
        die "Exec*= command $command does not exist on this machine"
    fi
done

# 1. verify: no output at all.
status=0
output=$(systemd-analyze verify --root="$root" --man=no "${units[@]}" 2>&1) || status=$?
if ((status != 0)) || [[ -n $output ]]; then
    printf '%s\n' "$output" >&2
    if ((status != 0)); then
        die "systemd-analyze verify failed (exit $status)"
    fi
    die "systemd-analyze verify printed warnings (above)"
fi
echo "verify: ${units[*]}: clean$stubbed"

# 2. security, offline: each service at most $max_exposure.
scores=()
for service in "${services[@]}"; do
    status=0
    # --threshold counts in tenths: 20 = exposure 2.0.
    report=$(systemd-analyze security --offline=true --root="$root" --no-pager \
        --threshold=20 "$service" 2>&1) || status=$?
    score=$(printf '%s\n' "$report" |
        sed -nE 's/.*Overall exposure level for [^:]+: ([0-9]+\.[0-9]+).*/\1/p')
    if [[ -z $score ]]; then
        printf '%s\n' "$report" >&2
        die "$service: no exposure level in the output of systemd-analyze security"
    fi
    echo "security: $service: exposure $score; remaining exposures:"
    printf '%s\n' "$report" | grep '✗' | sed 's/^/  /' || true
    if ((status != 0)) || ! awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
        die "$service: exposure $score is above $max_exposure"
    fi
    scores+=("$service $score")
done

# 3. the timer's schedule parses (and when it fires next).
on_calendar=$(sed -nE 's/^OnCalendar=(.*)$/\1/p' "$here/driftsync-reconcile.timer")
[[ -n $on_calendar ]] || die "driftsync-reconcile.timer has no OnCalendar="
next=$(systemd-analyze calendar "$on_calendar" 2>&1) || {
    printf '%s\n' "$next" >&2
    die "OnCalendar=$on_calendar does not parse"
}
echo "calendar: OnCalendar=$on_calendar: next elapse $(printf '%s\n' "$next" | sed -nE 's/^ *Next elapse: *//p' | head -n 1)"

daemon_score=${scores[0]#* }
echo "systemd: ${#units[@]} units verified, exposure $daemon_score (driftsync.service; ${scores[1]}), systemd $version"
