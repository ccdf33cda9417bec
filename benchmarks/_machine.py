"""What a benchmark ran on, for its header and its results file.

Training on a few dozen images is chaotic in float round-off, and oneDNN picks different kernels
on different CPUs, so the same command and seed can give another AUC on another machine: every
result says which CPU and which package versions made it.
"""

import importlib.metadata
import os
import platform

PACKAGES = ("keras", "tensorflow-cpu", "tensorflow", "numpy", "jax", "torch")
NUMERIC_ENV = ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (`platform`'s guess where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe():
    """`{"cpu", "cpus", "arch", "python", "packages": {name: version}, "env": {name: value}}`.

    Versions come from the installed distributions, so nothing heavy is imported.
    """
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "arch": platform.machine(),
            "python": platform.python_version(), "packages": packages,
            "env": {k: os.environ[k] for k in NUMERIC_ENV if k in os.environ}}


def summary(machine=None):
    """One line: `Intel(R) Xeon(R) Processor, 2 CPUs x86_64; Python 3.11.7, keras 3.15.1, ...`."""
    machine = machine or describe()
    parts = [f"Python {machine['python']}", *(f"{k} {v}" for k, v in machine["packages"].items()),
             *(f"{k}={v}" for k, v in machine["env"].items())]
    return f"{machine['cpu']}, {machine['cpus']} CPUs {machine['arch']}; " + ", ".join(parts)


if __name__ == "__main__":
    print(summary())
