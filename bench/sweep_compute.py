#!/usr/bin/env python3
"""Compute a finished sweep spent, from the coordinator's own records: the sum
over its jobs of the time their processes ran (from `running` to the end of
each attempt) and the number of epochs they reported.

    python3 bench/sweep_compute.py SWEEP [CLI]
    (SWEEPFOLD_COORDINATOR names the coordinator; CLI: the coordinator binary,
     default target/debug/coordinator)

Prints one JSON object: {"jobs", "job_seconds", "epochs"}.
"""
import json
import subprocess
import sys


CLI = sys.argv[2] if len(sys.argv) > 2 else "target/debug/coordinator"


def cli(*args):
    out = subprocess.run([CLI, *args, "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    sweep = sys.argv[1]
    seconds, epochs, jobs = 0.0, 0, 0
    for job in cli("jobs", sweep):
        detail = cli("job", str(job["id"]))
        jobs += 1
        started = None
        for ev in detail["history"]:
            if ev["to"] == "running":
                started = ev["at_ms"]
            elif started is not None and ev["to"] in ("succeeded", "failed", "cancelled", "queued"):
                seconds += (ev["at_ms"] - started) / 1000.0
                started = None
        epochs += len(detail["metrics"])
    print(json.dumps({"jobs": jobs, "job_seconds": round(seconds, 1), "epochs": epochs}))


if __name__ == "__main__":
    main()
