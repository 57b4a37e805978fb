#!/usr/bin/env python3
"""Time from a worker's SIGSTOP to its processes being reported lost.

Starts a planner and 3 workers (separate `nimbus` processes on loopback), runs
`fan_out 6` on them, freezes a worker holding children of the root (SIGSTOP), lets
the root send to and wait on every child, and times each line of the root's output
as it reaches `nimbus run`. Prints, per run, when the children on the frozen worker
were reported lost and when `nimbus run` ended, beside the bound the mesh documents
(its keepalive timeout, 3 s). Usage: `bench/frozen.py [RUNS]`; the binary is
`$NIMBUS_BIN` (default `target/release/nimbus`), the guests those of
`scripts/build-guests.sh`.
"""
import os, re, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("NIMBUS_BIN", os.path.join(ROOT, "target/release/nimbus"))
FAN_OUT = os.path.join(ROOT, "target/guests/c-fan-out.wasm")
BOUND = 3.0


def once():
    base = tempfile.mkdtemp(prefix="nimbus-frozen-")
    env = dict(os.environ, NIMBUS_DATA_DIR=base, NIMBUS_CLUSTER_DIR=base + "/cluster",
               NIMBUS_CONFIG=base + "/config.json")
    daemons = []

    def start(args, announced):
        daemon = subprocess.Popen([BIN] + args, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        daemons.append(daemon)
        for line in daemon.stdout:
            if announced in line:
                return daemon, line.strip()
        raise SystemExit(f"nimbus {' '.join(args)} ended before announcing itself")

    try:
        _, line = start(["planner", "--listen", "127.0.0.1:0", "--heartbeat", "500ms",
                         "--data-dir", base + "/planner"], "planner listening on ")
        planner = line.split("listening on ")[1]
        workers = {}
        for n in range(3):
            daemon, line = start(["worker", "--planner", planner, "--allow-dir", base,
                                  "--data-dir", f"{base}/worker-{n}"], "worker joined")
            workers[re.search(r"as host (\S+)", line).group(1)] = daemon
        share = base + "/share"
        os.makedirs(share)
        run = subprocess.Popen([BIN, "run", "--dir", share + "::/share", "--planner", planner,
                                FAN_OUT, "--", "6", "/share/go"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 30
        while True:
            ps = subprocess.run([BIN, "ps", "--planner", planner], env=env,
                                capture_output=True, text=True).stdout
            rows = [row.split() for row in ps.splitlines()[1:] if row.strip()]
            if len(rows) >= 7:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the tree never started:\n" + ps)
            time.sleep(0.05)
        root = rows[0][1]
        frozen = next(row[1] for row in rows[1:] if row[1] != root)
        frozen_at = time.monotonic()
        workers[frozen].send_signal(signal.SIGSTOP)
        open(share + "/go", "w").close()
        lost = []
        for line in run.stdout:
            if "lost (" in line:
                lost.append(time.monotonic() - frozen_at)
        run.wait(timeout=60)
        ended = time.monotonic() - frozen_at
        workers[frozen].send_signal(signal.SIGCONT)
        return lost, ended
    finally:
        for daemon in daemons:
            daemon.kill()


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"SIGSTOP of a worker holding children; bound (mesh keepalive timeout): {BOUND:.2f} s")
    for n in range(runs):
        lost, ended = once()
        shown = ", ".join(f"{t:.2f}" for t in lost) or "none"
        ratio = max(lost) / BOUND if lost else float("nan")
        print(f"run {n + 1}: children reported lost at {shown} s (last/bound {ratio:.2f}); "
              f"nimbus run ended at {ended:.2f} s")


if __name__ == "__main__":
    main()
