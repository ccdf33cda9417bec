"""The line protocol between `bench_training.py --vs-torch` and its step workers.

Each framework runs in its own process (PyTorch lives in its own virtualenv, and a Keras backend
is fixed per process), so the benchmark keeps one worker per configuration alive and asks them in
turn for timed steps: the ratios compare steps timed seconds apart, which survives a shared
machine. Plain Python only: the PyTorch worker imports this without Keras.

A worker prints `READY <json>` when its model is built and warmed up, then answers each line
`STEPS n` with `TIMED <json>` (`seconds` per step, the last `loss`), and `QUIT` with
`DONE <json>` (peak resident memory, `VmHWM`) before it exits.
"""

import json
import sys
import time


def memory_mib(field):
    """`VmHWM` (peak) or `VmRSS` (now) of this process in MiB, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def send(tag, **payload):
    sys.stdout.write(f"{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def serve(step, ready):
    """Runs the worker loop: `step()` does one training step and returns its loss (a float)."""
    send("READY", **ready, rss_mib=memory_mib("VmRSS"))
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "STEPS":
            n = int(words[1])
            start = time.perf_counter()
            loss = None
            for _ in range(n):
                loss = step()
            send("TIMED", seconds=(time.perf_counter() - start) / n, loss=loss)
        elif words[0] == "QUIT":
            send("DONE", peak_mib=memory_mib("VmHWM"))
            return
