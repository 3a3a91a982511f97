"""The soak test's driver (bench/soak.sh starts the daemon, the simulator and PostgreSQL).

    python bench/soak.py PID METRICS_URL LEGACY_URL AUTH0_BASE_URL SECONDS CHANGES_PERIOD

While the daemon runs its full and changes schedules, for SECONDS:
- scrapes METRICS_URL 20 times a second and times each scrape;
- samples the daemon's resident memory and open file descriptors every second;
- once the daemon's first full run is done (the warm-up), every CHANGES_PERIOD * 2 seconds
  renames one legacy user (a committed UPDATE with a fresh
  `updated_at`) and polls the simulator's Management API until Auth0 shows the new name, which
  times how long the edit took to be pushed.
Prints one JSON object: RSS and fd samples, scrape latency percentiles, edit delays, and the
daemon's run counters from its last scrape.
"""

import json
import sys
import threading
import time
import urllib.parse
import urllib.request

import psycopg


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))


def token(base):
    body = json.dumps({
        "grant_type": "client_credentials",
        "client_id": "driftsync-test",
        "client_secret": "test-secret",
        "audience": "https://tenant.simulator.local/api/v2/",
    }).encode()
    request = urllib.request.Request(f"{base}/oauth/token", body, {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(request))["access_token"]


def auth0_name(base, bearer, user_id):
    url = f"{base}/api/v2/users/{urllib.parse.quote(user_id, safe='')}"
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {bearer}"})
    try:
        return json.load(urllib.request.urlopen(request)).get("name")
    except urllib.error.HTTPError as error:
        if error.code in (404, 429):
            return None
        raise


def main():
    pid, metrics, legacy, base = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    seconds, period = float(sys.argv[5]), float(sys.argv[6])
    stop = time.monotonic() + seconds
    latencies, samples, edits, edit_times, last = [], [], [], [], [""]
    failures = []

    def scrape():
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                last[0] = urllib.request.urlopen(metrics, timeout=5).read().decode()
                latencies.append(time.monotonic() - started)
            except Exception as error:  # a failed scrape is a finding, not a crash
                failures.append(f"scrape: {error}")
            time.sleep(max(0.0, 0.05 - (time.monotonic() - started)))

    def sample():
        start = time.monotonic()
        while time.monotonic() < stop:
            samples.append((round(time.monotonic() - start, 1), rss_kib(pid), fds(pid)))
            time.sleep(1.0)

    threads = [threading.Thread(target=scrape), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    bearer = token(base)
    # Warm-up: edits start once the first full run is done (it sets the watermark, and pushes
    # what was stranded when the daemon started, at the tenant's rate limit).
    while time.monotonic() < stop and 'driftsync_runs_total{kind="full",outcome="success"}' not in last[0]:
        time.sleep(0.2)
    with psycopg.connect(legacy, autocommit=True) as db:
        # Users in sync: an edit of theirs is a change only the legacy side made.
        rows = db.execute("SELECT id, name FROM users ORDER BY id LIMIT 5000").fetchall()
        edit = 0
        candidates = iter(rows)
        while time.monotonic() + 3 * period < stop:
            user = next((user for user, legacy_name in candidates
                         if auth0_name(base, bearer, f"auth0|{user}") == legacy_name), None)
            if user is None:
                break
            name = f"Soak Edit {edit}"
            db.execute("UPDATE users SET name = %s, updated_at = now() WHERE id = %s", (name, user))
            committed = time.monotonic()
            seen = None
            while time.monotonic() < committed + 6 * period:
                if auth0_name(base, bearer, f"auth0|{user}") == name:
                    seen = time.monotonic() - committed
                    break
                time.sleep(0.25)
            edits.append(seen)
            edit_times.append(time.time() - (time.monotonic() - committed))
            edit += 1
            time.sleep(max(0.0, 2 * period - (time.monotonic() - committed)))
    for thread in threads:
        thread.join()
    latencies.sort()

    def percentile(p):
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else None

    runs = {}
    for line in last[0].splitlines():
        if line.startswith("driftsync_runs_total{"):
            labels, value = line.rsplit(" ", 1)
            runs[labels[len("driftsync_runs_total"):]] = float(value)
    print(json.dumps({
        "samples": samples,
        "scrapes": len(latencies),
        "scrape_ms": {"p50": percentile(0.50), "p99": percentile(0.99), "max": percentile(1.0)},
        "edits": edits,
        "edit_times": edit_times,
        "runs": runs,
        "failures": failures[:10],
    }))


if __name__ == "__main__":
    main()
