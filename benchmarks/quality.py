"""The quality benchmark: verification on identities training never saw, against a plain Keras script.

A fixed open-set protocol on an image folder (one sub-folder per identity; made for
`../shared/data/emoji-4vendor`, 1,400 emoji × 4 vendor drawings): the identities are split with
`--split-seed` into `--train-identities` for training and `--unseen` others, all images of each;
the verification pairs are every genuine pair among the unseen identities plus ten times as many
random impostor pairs. Each row is a command a user runs, in its own process, for every seed:

- `plain_softmax`, `plain_arcface`: benchmarks/plain_keras.py, the anchor (keras.layers only);
- `default`: `facemargin train --data TRAIN --image-size 48 --epochs 15` (nothing else);
- `softmax`, `arcface`, `cosface`, `circle`, ...: the same with `--loss NAME`;
- `best`: the same with `--best FLAGS`;

and the embeddings of the unseen images come from the row's own export (`facemargin embed` on
the SavedModel; the plain script embeds in its own process). Reported per row: AUC, EER,
TAR@FAR=1e-2 and 1e-3, 10-fold accuracy (mean ± std over the seeds), the training command's wall
seconds and its peak memory (`wait4`'s ru_maxrss).

    python benchmarks/quality.py --data ../shared/data/emoji-4vendor --out runs/quality
    python benchmarks/quality.py --data DIR --rows plain_softmax,default --seeds 0 --epochs 2 ...
    python benchmarks/quality.py --digits --train-identities 7 --unseen 3 --image-size 32 ...
    python benchmarks/quality.py --data DIR --out runs/fused --fuse A/embeddings.npz B/embeddings.npz
    python benchmarks/quality.py --data DIR --out runs/misses --misses A/embeddings.npz

`--flip-test` also embeds each `facemargin` row with `facemargin embed --flip` (an image's
embedding plus its mirror's) and reports it as the row `NAME+flip`, from the same training.
`--fuse` trains nothing: it scores the embeddings of earlier runs on the same split one by one and
fused (the mean of their cosine similarities), which shows how much of the error one model's
variance makes. `--misses` trains nothing either: it lists one run's errors at the strictest
operating point (TAR@FAR=1e-3), the impostor pairs that set its threshold and where the rejected
genuine pairs fall, which shows whether the strict end is the model's or the data's.
"""

import argparse
import collections
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _machine  # noqa: E402

PLAIN = os.path.join(HERE, "plain_keras.py")
FACEMARGIN = os.path.join(os.path.dirname(sys.executable), "facemargin")
DEFAULT_ROWS = ("plain_softmax", "plain_arcface", "default", "softmax", "arcface", "cosface", "circle",
                "best")
FARS = (1e-2, 1e-3)


def split_identities(root, train_identities, unseen, seed):
    """`(training identity folders, unseen identity folders)`, drawn with `seed`."""
    names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and
                   not n.startswith("."))
    if train_identities + unseen > len(names):
        raise SystemExit(f"quality.py: error: --train-identities {train_identities} + --unseen {unseen} "
                         f"exceed the {len(names)} identities of {root}")
    order = np.random.default_rng(seed).permutation(len(names))
    pick = [names[i] for i in order]
    return sorted(pick[:train_identities]), sorted(pick[train_identities:train_identities + unseen])


def link_folder(root, identities, dest):
    """`dest/<identity>/<file>` as symbolic links to the images of `root` (a folder per identity)."""
    if os.path.isdir(dest):
        return dest
    tmp = dest + ".tmp"
    for name in identities:
        os.makedirs(os.path.join(tmp, name), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(root, name))):
            os.symlink(os.path.abspath(os.path.join(root, name, f)), os.path.join(tmp, name, f))
    os.replace(tmp, dest)
    return dest


def verification_pairs(paths, seed):
    """Every genuine pair of the unseen images, plus 10× as many random impostor pairs (all of
    them where there are fewer)."""
    identity = np.array([os.path.basename(os.path.dirname(p)) for p in paths])
    a, b = [], []
    for name in np.unique(identity):
        members = np.flatnonzero(identity == name)
        for i, x in enumerate(members):
            for y in members[i + 1:]:
                a.append(x)
                b.append(y)
    genuine = len(a)
    counts = np.unique(identity, return_counts=True)[1]
    available = (len(paths) ** 2 - int((counts ** 2).sum())) // 2  # distinct cross-identity pairs
    wanted = min(10 * genuine, available)
    rng = np.random.default_rng(seed)
    seen = set()
    while len(a) < genuine + wanted:
        x, y = (int(v) for v in rng.integers(0, len(paths), 2))
        key = (min(x, y), max(x, y))
        if identity[x] != identity[y] and key not in seen:
            seen.add(key)
            a.append(x)
            b.append(y)
    return np.array(a), np.array(b), np.arange(len(a)) < genuine


def timed(command, log_path):
    """Runs `command`; returns (exit status, wall seconds, peak RSS in MiB of that process)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(shlex.quote(c) for c in command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, seconds, usage.ru_maxrss / 1024


def row_command(row, train_dir, run_dir, args, seed):
    common = ["--data", train_dir, "--image-size", str(args.image_size), "--epochs", str(args.epochs),
              "--seed", str(seed), "--run-dir", run_dir]
    if row == "default":
        return [FACEMARGIN, "train", *common]
    if row == "best":
        return [FACEMARGIN, "train", *common, *shlex.split(args.best)]
    return [FACEMARGIN, "train", *common, "--loss", row]


def unseen_embeddings(npz, unseen_paths):
    """The embeddings of `npz` (a `facemargin embed` output) in the order of `unseen_paths`, as unit
    rows in float64; None when one is not finite or an unseen image is missing from it."""
    from keras_facemargin import evaluation as ev

    data = np.load(npz)
    position = {os.path.realpath(p): i for i, p in enumerate(data["paths"])}
    if any(os.path.realpath(p) not in position for p in unseen_paths):
        return None
    order = np.array([position[os.path.realpath(p)] for p in unseen_paths])
    embeddings = data["embeddings"][order].astype(np.float64)
    return ev.normalize_rows(embeddings) if np.isfinite(embeddings).all() else None


def pair_scores(npzs, unseen_paths, pairs):
    """The protocol's pair scores under one embeddings file, or several fused: a pair's score is the
    mean of its cosine similarities under each (the cosine of the concatenated unit embeddings, times
    a constant). None when one of them fails `unseen_embeddings`."""
    from keras_facemargin import evaluation as ev

    npzs = [npzs] if isinstance(npzs, str) else list(npzs)
    parts = [unseen_embeddings(npz, unseen_paths) for npz in npzs]
    if any(part is None for part in parts):
        return None
    a, b, _ = pairs
    return np.mean([ev.indexed_pair_scores(part, a, b) for part in parts], axis=0)


def evaluate(npzs, unseen_paths, pairs):
    """The verification report of `pair_scores` (None where that is None)."""
    from keras_facemargin import evaluation as ev

    scores = pair_scores(npzs, unseen_paths, pairs)
    if scores is None:
        return None
    return ev.verification_report(pairs[2].astype(int), scores, far_targets=FARS)


def report_fields(report):
    return dict(auc=report.auc, eer=report.eer, tar_1e2=report.tar_at_far[1e-2],
                tar_1e3=report.tar_at_far[1e-3], accuracy_10fold=report.accuracy_10fold)


def embed(work, unseen_dir, npz, *flags):
    """`facemargin embed` of the run in `work` on the unseen images; returns its exit status."""
    command = [FACEMARGIN, "embed", "--model", os.path.join(work, "run", "saved_model"), "--images",
               unseen_dir, "--out", npz, "--batch-size", "256", *flags]
    name = os.path.splitext(os.path.basename(npz))[0].replace("embeddings", "embed")
    return timed(command, os.path.join(work, f"{name}.log"))[0]


def run_row(row, seed, args, train_dir, unseen_dir, unseen_paths, pairs):
    """Trains and scores one row for one seed; returns a list: its result and, with `--flip-test` (a
    `facemargin` row), `NAME+flip`, the same training embedded with the flip test."""
    work = os.path.join(args.out, "runs", f"{row}-seed{seed}")
    os.makedirs(work, exist_ok=True)
    npz = os.path.join(work, "embeddings.npz")
    if row.startswith("plain_"):
        command = [sys.executable, PLAIN, "--train", train_dir, "--unseen", unseen_dir, "--head",
                   row.split("_", 1)[1], "--image-size", str(args.image_size), "--epochs",
                   str(args.epochs), "--seed", str(seed), "--out", npz]
        code, seconds, peak = timed(command, os.path.join(work, "train.log"))
    else:
        run_dir = os.path.join(work, "run")
        code, seconds, peak = timed(row_command(row, train_dir, run_dir, args, seed),
                                    os.path.join(work, "train.log"))
        if code == 0:
            code = embed(work, unseen_dir, npz)
    embedded = [(row, npz, code)]
    if code == 0 and args.flip_test and not row.startswith("plain_"):
        flip_npz = os.path.join(work, "embeddings_flip.npz")
        embedded.append((f"{row}+flip", flip_npz, embed(work, unseen_dir, flip_npz, "--flip")))
    results = []
    for name, path, status in embedded:
        report = evaluate(path, unseen_paths, pairs) if status == 0 else None
        results.append({"row": name, "seed": seed, "exit": status, "seconds": seconds, "peak_mib": peak,
                        **(report_fields(report) if report is not None else {})})
    with open(os.path.join(work, "result.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


COLUMNS = (("auc", "AUC"), ("eer", "EER"), ("tar_1e2", "TAR@FAR=1e-2"), ("tar_1e3", "TAR@FAR=1e-3"),
           ("accuracy_10fold", "10-fold acc."))


def table(results, rows, commands):
    header = ["row", *(title for _, title in COLUMNS), "train s", "peak MiB", "command"]
    lines = []
    for row in rows:
        done = [r for r in results if r["row"] == row and "auc" in r]
        failed = [r for r in results if r["row"] == row and "auc" not in r]
        cells = [row]
        for key, _ in COLUMNS:
            values = np.array([r[key] for r in done])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "failed")
        seconds = np.array([r["seconds"] for r in done])
        cells.append(f"{seconds.mean():.0f}" if len(seconds) else "-")
        cells.append(f"{max(r['peak_mib'] for r in done):.0f}" if done else "-")
        cells.append(commands[row] + (f" ({len(failed)} failed)" if failed else ""))
        lines.append(cells)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]

    def join(values):
        return "| " + " | ".join(str(x).ljust(w) for x, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([join(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(join(line) for line in lines)])


def write_report(out, name, text, data):
    """Prints `text` and writes it to OUT/NAME.md and `data` to OUT/NAME.json; returns `data`."""
    print(text)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2)
    return data


def fuse(parser, npzs, unseen_paths, pairs, out):
    """`--fuse`: each file's report, then the fusion of all of them; writes OUT/fuse.{md,json}."""
    results = []
    for name, files in [*((npz, [npz]) for npz in npzs), ("fused", npzs)]:
        report = evaluate(files, unseen_paths, pairs)
        if report is None:
            parser.error(f"argument --fuse: {name!r} lacks finite embeddings of this split's unseen images "
                         "(expected the embeddings.npz of a run on the same --data and --split-seed)")
        results.append({"row": name, **report_fields(report)})
    header = ["embeddings", *(title for _, title in COLUMNS)]
    lines = [[r["row"], *(f"{r[key]:.4f}" for key, _ in COLUMNS)] for r in results]
    text = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(line) + " |" for line in lines)])
    return write_report(out, "fuse", text, results)


def misses(parser, npz, unseen_paths, pairs, out, far=FARS[-1]):
    """`--misses`: the errors of one embeddings file at the threshold of TAR@FAR=`far` (the
    protocol's strictest): every impostor pair it accepts, and the genuine pairs it rejects counted
    by pair of file names (for emoji-4vendor, the two vendors) and by identity. Writes
    OUT/misses.{md,json}; returns the dict written."""
    from keras_facemargin import evaluation as ev
    from keras_facemargin.evaluation.verification import far_name

    scores = pair_scores(npz, unseen_paths, pairs)
    if scores is None:
        parser.error(f"argument --misses: {npz!r} lacks finite embeddings of this split's unseen images "
                     "(expected the embeddings.npz of a run on the same --data and --split-seed)")
    a, b, same = pairs
    report = ev.verification_report(same.astype(int), scores, far_targets=(far,))
    threshold = report.thresholds_at_far[far]
    identity = [os.path.basename(os.path.dirname(p)) for p in unseen_paths]
    image = [f"{identity[i]}/{os.path.basename(p)}" for i, p in enumerate(unseen_paths)]
    accepted = np.flatnonzero(~same & (scores >= threshold))
    accepted = accepted[np.argsort(-scores[accepted], kind="stable")]
    rejected = np.flatnonzero(same & (scores < threshold))
    by_files = collections.Counter(
        " & ".join(sorted((os.path.basename(unseen_paths[a[i]]), os.path.basename(unseen_paths[b[i]]))))
        for i in rejected)
    by_identity = collections.Counter(identity[a[i]] for i in rejected)
    result = {
        "embeddings": npz, "far": far, "threshold": threshold, "tar": report.tar_at_far[far],
        "impostors_accepted": [{"score": float(scores[i]), "a": image[a[i]], "b": image[b[i]]}
                               for i in accepted],
        "genuine_rejected": int(len(rejected)), "genuine": int(same.sum()),
        "rejected_by_file_names": dict(sorted(by_files.items(), key=lambda kv: (-kv[1], kv[0]))),
        "rejected_by_identity": dict(sorted(by_identity.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    lines = [f"# {npz} at FAR={far_name(far)}: threshold {threshold:.4f}, TAR {result['tar']:.4f}",
             f"impostor pairs accepted ({len(accepted)} of {int((~same).sum())}):",
             *(f"  {r['score']:.4f}  {r['a']}  {r['b']}" for r in result["impostors_accepted"]),
             f"genuine pairs rejected: {len(rejected)} of {result['genuine']}; by file names:",
             *(f"  {k}: {v}" for k, v in result["rejected_by_file_names"].items()),
             "the identities with the most rejected genuine pairs:",
             *(f"  {k}: {v}" for k, v in list(result["rejected_by_identity"].items())[:10])]
    return write_report(out, "misses", "\n".join(lines), result)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="image folder, one sub-folder per identity")
    parser.add_argument("--digits", action="store_true",
                        help="instead of --data: scikit-learn's digits as a 32 px folder (use "
                        "--train-identities 7 --unseen 3 --image-size 32)")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help="comma-separated: plain_softmax, plain_arcface, default, best, or a --loss name")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--train-identities", type=int, default=1000)
    parser.add_argument("--unseen", type=int, default=400)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--best", default="", help="the flags of the 'best' row")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--fuse", nargs="+", metavar="NPZ",
                        help="train nothing: score these embeddings.npz of earlier runs (same --data and "
                        "--split-seed) one by one and fused, a pair's score the mean of their cosines")
    parser.add_argument("--misses", metavar="NPZ",
                        help="train nothing: list the errors of this embeddings.npz of an earlier run (same "
                        "--data and --split-seed) at the threshold of TAR@FAR=1e-3: the impostor pairs it "
                        "accepts, and the genuine pairs it rejects by file names and by identity")
    parser.add_argument("--flip-test", action="store_true",
                        help="also embed each facemargin row with `facemargin embed --flip` (an image's "
                        "embedding plus its mirror's) and report it as the row NAME+flip")
    parser.add_argument("--dry-run", action="store_true",
                        help="the plain_softmax and default rows, one seed, one epoch, 16 px, few identities")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.rows, args.seeds, args.epochs, args.image_size = "plain_softmax,default", [0], 1, 16
        args.train_identities, args.unseen = 3, 2
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if args.digits == bool(args.data):
        parser.error("give exactly one of --data and --digits")
    if args.digits:
        from keras_facemargin import experiments

        args.data = os.path.join(args.out, "digits")
        experiments.digit_folder(args.data, size=32)
    if not os.path.isdir(args.data):
        parser.error(f"argument --data: expected an image folder; got {args.data!r}")
    for flag, npzs in (("--fuse", args.fuse or ()), ("--misses", [args.misses] if args.misses else ())):
        for npz in npzs:
            if not os.path.isfile(npz):
                parser.error(f"argument {flag}: expected embeddings.npz files of earlier runs; got {npz!r}, "
                             "which is not a file")
    if args.fuse and args.misses:
        parser.error("give at most one of --fuse and --misses")
    if "best" in rows and not args.best and not (args.fuse or args.misses):
        parser.error("the 'best' row needs --best FLAGS")
    os.makedirs(args.out, exist_ok=True)
    train_ids, unseen_ids = split_identities(args.data, args.train_identities, args.unseen, args.split_seed)
    train_dir = link_folder(args.data, train_ids, os.path.join(args.out, "train"))
    unseen_dir = link_folder(args.data, unseen_ids, os.path.join(args.out, "unseen"))
    unseen_paths = sorted(os.path.join(unseen_dir, n, f) for n in unseen_ids
                          for f in os.listdir(os.path.join(unseen_dir, n)))
    pairs = verification_pairs(unseen_paths, args.split_seed)
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = _machine.describe()
    training = f"{args.image_size} px, {args.epochs} epochs, seeds {args.seeds}; "
    training = "" if args.fuse or args.misses else training  # they train nothing
    print(f"# quality: {args.data}; {len(train_ids)} training identities, {len(unseen_ids)} unseen "
          f"({len(unseen_paths)} images); {int(pairs[2].sum())} genuine + {int((~pairs[2]).sum())} impostor "
          f"pairs; {training}{started:%Y-%m-%d %H:%M} UTC; {_machine.summary(machine)}", flush=True)
    if args.fuse:
        return fuse(parser, args.fuse, unseen_paths, pairs, args.out)
    if args.misses:
        return misses(parser, args.misses, unseen_paths, pairs, args.out)
    commands = {}
    for row in rows:
        if row.startswith("plain_"):
            commands[row] = f"plain_keras.py --head {row.split('_', 1)[1]}"
        else:
            command = row_command(row, "TRAIN", "RUN", args, 0)
            commands[row] = " ".join(["facemargin", *command[1:]]).replace(" --seed 0 --run-dir RUN", "")
            if args.flip_test:
                commands[f"{row}+flip"] = commands[row] + "; facemargin embed --flip"
    results = []
    for seed in args.seeds:
        for row in rows:
            for result in run_row(row, seed, args, train_dir, unseen_dir, unseen_paths, pairs):
                results.append(result)
                summary = ", ".join(f"{k} {result[k]:.4f}" for k, _ in COLUMNS if k in result)
                failed = f"FAILED (exit {result['exit']})"
                print(f"{result['row']} seed {seed}: {summary or failed}; "
                      f"{result['seconds']:.0f} s, {result['peak_mib']:.0f} MiB", flush=True)
    table_rows = [name for row in rows for name in (row, f"{row}+flip") if name in commands]
    text = table(results, table_rows, commands)
    print("\n" + text)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"started_utc": started.isoformat(), "machine": machine, "settings": vars(args),
                   "results": results}, f,
                  indent=2)
    return results


if __name__ == "__main__":
    main()
