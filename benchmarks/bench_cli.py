"""Start-up time of the `facemargin` command: `--help` and an argument error, against bare Python.

Each is a fresh process (what a user waits for), timed in interleaved repeats against
`python -c pass` (the interpreter's own start-up) and `python -c "import tensorflow"` (what a command
that loaded TensorFlow first would cost at least). Target: `facemargin --help` under 0.5 s.

    python benchmarks/bench_cli.py [--repeats 5] [--dry-run]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def timed(command, env):
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dry-run", action="store_true", help="one repeat, without the TensorFlow row")
    args = parser.parse_args()
    repeats = 1 if args.dry_run else args.repeats
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    script = shutil.which("facemargin", path=os.path.dirname(sys.executable))
    # The installed console script, or the same entry point run the way it runs (argv[0] = facemargin).
    entry = [script] if script else [sys.executable, "-c",
                                     "import sys; sys.argv[0] = 'facemargin'; "
                                     "from keras_facemargin.cli import main; sys.exit(main())"]
    commands = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "facemargin --help": [*entry, "--help"],
        "facemargin train --help": [*entry, "train", "--help"],
        "facemargin train --epochs 0 (error)": [*entry, "train", "--data", ".", "--epochs", "0"],
    }
    if not args.dry_run:
        commands["python -c 'import tensorflow'"] = [sys.executable, "-c", "import tensorflow"]
    times = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            seconds, done = timed(command, env)
            expected = 2 if "(error)" in name else 0
            if done.returncode != expected:
                raise SystemExit(f"{name}: exit status {done.returncode}, expected {expected}: "
                                 f"{done.stderr[-500:]}")
            times[name].append(seconds)
    print(f"# bench_cli: {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs; {repeats} interleaved "
          f"repeats, medians; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"# entry point: {' '.join(entry[:1]) if script else 'keras_facemargin.cli:main via python -c'}")
    base = times["python -c pass (baseline)"]
    print(f"{'command':<38}{'seconds':>9}{'minus python':>14}{'ratio':>8}")
    for name, values in times.items():
        seconds = statistics.median(values)
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(f"{name:<38}{seconds:>9.3f}{seconds - statistics.median(base):>14.3f}{ratio:>8.2f}")
    help_seconds = statistics.median(times["facemargin --help"])
    verdict = "met" if help_seconds < 0.5 else "missed"
    print(f"facemargin --help: {help_seconds:.3f} s (target < 0.5 s: {verdict})")


if __name__ == "__main__":
    main()
