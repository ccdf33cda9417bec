"""The peer baseline of `bench_training.py --vs-torch`: an arcface_torch-style training step in PyTorch.

Written from the description of InsightFace's `recognition/arcface_torch` (not copied from it):

- IR-ResNet (`iresnet18`: stages (2, 2, 2, 2), `iresnet50`: (3, 4, 14, 3); widths 64, 128, 256,
  512): a stem Conv3×3(64, stride 1)-BN-PReLU, then units BN-Conv3×3-BN-PReLU-Conv3×3(stride)-BN
  with the stride in the second conv and a Conv1×1(stride)-BN shortcut where the shape changes,
  then the output block BN-Dropout-Flatten-Linear(512·7·7 → 512)-BN1d (its scale fixed at 1).
  BatchNorm eps 1e-5, PyTorch's NCHW layout, 112×112 inputs, embedding 512.
- ArcFace as arcface_torch's `CombinedMarginLoss(s=64, m1=1, m2=0.5, m3=0)` on a normalised-weight
  fully connected layer: cos θ = normalize(x) · normalize(W), clamped to [-1, 1], the target
  cosines replaced by cos(θ + m) (where θ + m <= π; cos θ − m·sin m beyond, the fallback of the
  library's own loss), times s, then cross-entropy.
  arcface_torch writes the target replacement in place under `torch.no_grad()`; here it is an
  ordinary differentiable op on the batch's target entries only, which costs the same up to
  B elements.
- SGD, lr 0.1, momentum 0.9, weight decay 5e-4, on the backbone and the FC weights.

Run by the benchmark inside `benchmarks/.torch-venv` (PyTorch only, no Keras, no TensorFlow):

    python arcface_torch_step.py --depth 18 --batch 8 --classes 1000 --threads 2 [--dry-run]
    python arcface_torch_step.py --device cuda --depth 50 --batch 256 --precision bfloat16 --time-steps 20

It speaks `_step_protocol`: READY, then TIMED for each `STEPS n`, DONE for `QUIT`. With
`--dry-run` (tiny sizes) it runs one step, prints the loss and exits, so the test suite can check
that the script still works when PyTorch is installed.
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _step_protocol  # noqa: E402

STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
WIDTHS = (64, 128, 256, 512)


def build(depth, size, embedding_dim, width=1.0, dropout=0.0):
    import torch
    from torch import nn

    def ch(c):
        return max(1, int(round(c * width)))

    class Unit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin, eps=1e-5),
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout, eps=1e-5),
                nn.PReLU(cout),
                nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout, eps=1e-5),
            )
            self.shortcut = None
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    layers = [nn.Conv2d(3, ch(64), 3, 1, 1, bias=False), nn.BatchNorm2d(ch(64), eps=1e-5), nn.PReLU(ch(64))]
    cin = ch(64)
    for units, base in zip(STAGES[depth], WIDTHS, strict=True):
        for i in range(units):
            layers.append(Unit(cin, ch(base), 2 if i == 0 else 1))
            cin = ch(base)
    side = size // 16
    features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
    nn.init.constant_(features.weight, 1.0)
    features.weight.requires_grad = False
    layers += [nn.BatchNorm2d(cin, eps=1e-5), nn.Dropout(dropout), nn.Flatten(),
               nn.Linear(cin * side * side, embedding_dim), features]
    return torch.nn.Sequential(*layers)


class ArcFaceFC:
    """Normalised-weight FC + additive angular margin + cross-entropy (s = 64, m = 0.5)."""

    def __init__(self, embedding_dim, num_classes, scale=64.0, margin=0.5):
        import torch

        self.weight = torch.nn.Parameter(torch.normal(0, 0.01, (num_classes, embedding_dim)))
        self.scale, self.margin = scale, margin
        self.threshold = math.cos(math.pi - margin)
        self.fallback = math.sin(math.pi - margin) * margin

    def loss(self, embeddings, labels):
        import torch
        import torch.nn.functional as F

        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1, 1)
        rows = torch.arange(cosine.shape[0], device=cosine.device)
        target = cosine[rows, labels]
        theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
        margin = torch.where(target > self.threshold, torch.cos(theta + self.margin),
                             target - self.fallback)
        logits = cosine.index_put((rows, labels), margin) * self.scale
        return F.cross_entropy(logits, labels)


def make_step(args):
    import numpy as np
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbone = build(args.depth, args.size, args.dim, width=args.width).to(device)
    if args.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    head = ArcFaceFC(args.dim, args.classes)
    head.weight = torch.nn.Parameter(head.weight.detach().to(device))
    params = [p for p in backbone.parameters() if p.requires_grad] + [head.weight]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(args.batch, 3, args.size, args.size)).astype("float32")).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(rng.integers(0, args.classes, size=args.batch).astype("int64")).to(device)
    backbone.train()
    autocast = args.precision == "bfloat16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            embeddings = backbone(x)
        loss = head.loss(embeddings.float(), y)
        loss.backward()
        optimizer.step()
        return float(loss.item())

    info = {"framework": f"torch {torch.__version__}", "device": str(device),
            "threads": torch.get_num_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "parameters": sum(p.numel() for p in params)}
    return step, info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=18, choices=sorted(STAGES))
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cpu", help="a torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--time-steps", type=int, default=0,
                        help="standalone: time this many steps after the warm-up and print images/s "
                        "(instead of serving the protocol)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one step, print the loss")
    args = parser.parse_args()
    if args.dry_run:
        args.size, args.batch, args.classes, args.dim, args.width, args.warmup = 16, 2, 10, 8, 0.125, 0
    step, info = make_step(args)
    if args.dry_run:
        loss = step()
        print(f"dry run: one step, loss {loss:.4f}, {info}")
        return 0 if math.isfinite(loss) else 1
    for _ in range(args.warmup):
        step()
    if args.time_steps:
        import time

        start = time.perf_counter()
        for _ in range(args.time_steps):
            loss = step()  # .item() waits for the device
        seconds = (time.perf_counter() - start) / args.time_steps
        print(f"arcface_torch-style IR-ResNet-{args.depth} on {info['device']} ({args.precision}), batch "
              f"{args.batch}: {seconds * 1e3:.1f} ms/step, {args.batch / seconds:.0f} images/s, "
              f"loss {loss:.3f}")
        return 0
    _step_protocol.serve(step, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
