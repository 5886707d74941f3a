"""Run every benchmark (`make bench`): each script in its own subprocess, its output shown as it
comes, then a summary of their `result:` lines, wall times and exit statuses.

The benchmarks print figures; they never assert timings. The exit status is non-zero only when a
script failed (crashed, timed out, or a correctness check inside it failed).
"""

from gevent import monkey

monkey.patch_all()

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from common import banner  # noqa: E402

HERE = Path(__file__).resolve().parent
# (script, seconds it may take before it is stopped); together they take about five minutes on 2 cores
# (stall.py about two and a half of them; one more with FreeSWITCH installed, for live_card_latency.py).
SCRIPTS = (("ingest.py", 150.0), ("card_latency.py", 120.0), ("backlog.py", 90.0), ("playback.py", 90.0),
           ("click_to_call.py", 90.0), ("routing.py", 90.0), ("stall.py", 420.0),
           # Prints one skipped line when FreeSWITCH and SIPp are not installed.
           ("live_card_latency.py", 180.0))


def run(script: str, timeout: float) -> tuple[int | str, float, list[str]]:
    """Run one script, echoing its output; (exit status or "timeout", seconds, its result lines)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-u", str(HERE / script)], cwd=HERE.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    results: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("result: "):
                results.append(line[len("result: "):].rstrip())

    reader = gevent.spawn(pump)
    try:
        status: int | str = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = "timeout after %.0f s" % timeout
    reader.join(timeout=5)
    return status, time.monotonic() - started, results


def main() -> int:
    banner("bench/run_all.py: every fs-crm benchmark", "each script runs alone in a subprocess")
    outcomes = []
    started = time.monotonic()
    for script, timeout in SCRIPTS:
        print()
        outcomes.append((script, *run(script, timeout)))
    print()
    print("=" * 100)
    print("SUMMARY (%.0f s in all)" % (time.monotonic() - started))
    failed = 0
    for script, status, seconds, results in outcomes:
        ok = status == 0
        failed += not ok
        print("  %-16s %s in %.0f s" % (script, "ok" if ok else "FAILED (%s)" % status, seconds))
        for line in results:
            print("      " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
