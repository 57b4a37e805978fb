#!/usr/bin/env python3
"""Planner restart: `kill -9` of the planner → every worker rejoined under its old id.

Starts a planner and 3 workers (separate `nimbus` processes on loopback), then, per
round, kills the planner with SIGKILL, starts it again on the same address and data
directory, and polls `nimbus hosts` until it lists the 3 workers with their old ids
and none of them "awaiting". Prints each round's time, p50 / p99 over the rounds and
the target (5 s), beside the baseline measured in the same run: a cold start, from
starting a fresh planner and 3 workers at once to all 3 listed.

Usage: `bench/restart.py [ROUNDS]` (default 10); the binary is `$NIMBUS_BIN` (default
`target/release/nimbus`).
"""
import os, re, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("NIMBUS_BIN", os.path.join(ROOT, "target/release/nimbus"))
TARGET = 5.0
WORKERS = 3
POLL = 0.01
WAIT = 30.0


class Cluster:
    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="nimbus-restart-")
        self.env = dict(os.environ, NIMBUS_DATA_DIR=self.base,
                        NIMBUS_CLUSTER_DIR=self.base + "/cluster",
                        NIMBUS_CONFIG=self.base + "/config.json")
        self.daemons = []
        self.planner = None
        self.address = None

    def spawn(self, args):
        daemon = subprocess.Popen([BIN] + args, env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        self.daemons.append(daemon)
        return daemon

    def start_planner(self, listen):
        self.planner = self.spawn(["planner", "--listen", listen, "--heartbeat", "500ms",
                                   "--data-dir", self.base + "/planner"])
        for line in self.planner.stdout:
            if "planner listening on " in line:
                self.address = line.split("listening on ")[1].strip()
                return
        raise SystemExit("the planner ended before announcing itself")

    def start_workers(self):
        for n in range(WORKERS):
            self.spawn(["worker", "--planner", self.address, "--allow-dir", self.base,
                        "--data-dir", f"{self.base}/worker-{n}"])

    def hosts(self):
        """The ids `nimbus hosts` lists as heard from since the planner started."""
        try:
            out = subprocess.run([BIN, "hosts", "--planner", self.address], env=self.env,
                                 capture_output=True, text=True, timeout=10).stdout
        except subprocess.TimeoutExpired:
            return []
        rows = [row.split() for row in out.splitlines()[1:] if row.strip()]
        return sorted(row[0] for row in rows if "awaiting" not in row)

    def until_listed(self, expected, since):
        deadline = since + WAIT
        while time.monotonic() < deadline:
            listed = self.hosts()
            if len(listed) == WORKERS and (expected is None or listed == expected):
                return time.monotonic() - since, listed
            time.sleep(POLL)
        raise SystemExit(f"the workers were not all listed within {WAIT} s: {self.hosts()}")

    def close(self):
        for daemon in self.daemons:
            daemon.kill()
            daemon.wait()


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    cluster = Cluster()
    try:
        began = time.monotonic()
        cluster.start_planner("127.0.0.1:0")
        cluster.start_workers()
        cold, ids = cluster.until_listed(None, began)
        print(f"planner restart with {WORKERS} workers (heartbeat 500 ms), {rounds} rounds")
        print(f"  baseline: cold start, planner and {WORKERS} workers to all listed: {cold:.3f} s")
        times = []
        for n in range(rounds):
            cluster.planner.kill()
            cluster.planner.wait()
            killed = time.monotonic()
            cluster.start_planner(cluster.address)
            took, listed = cluster.until_listed(ids, killed)
            if listed != ids:
                raise SystemExit(f"round {n + 1}: the workers came back as {listed}, not {ids}")
            times.append(took)
            print(f"  round {n + 1}: all {WORKERS} rejoined with their ids {','.join(ids)} "
                  f"in {took:.3f} s")
        p50, p99 = percentile(times, 50), percentile(times, 99)
        print(f"  kill -9 -> all rejoined   p50 {p50:.3f} s   p99 {p99:.3f} s   "
              f"(target <= {TARGET:.1f} s: {'met' if p99 <= TARGET else 'MISSED'}); "
              f"ratio to the cold start p50 {p50 / cold:.2f}x")
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
