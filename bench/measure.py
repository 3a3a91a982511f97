#!/usr/bin/env python3
"""Runs a command and prints `wall_seconds peak_rss_kib exit_code` on stderr's last line.

Peak RSS comes from getrusage(RUSAGE_CHILDREN), i.e. the largest resident set of the command
(or of its largest child), without needing GNU time on the machine.
"""
import resource
import subprocess
import sys
import time

start = time.monotonic()
code = subprocess.call(sys.argv[1:])
wall = time.monotonic() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{wall:.3f} {peak} {code}", file=sys.stderr)
