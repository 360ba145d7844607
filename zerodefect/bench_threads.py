"""Training under CPU contention: seconds per training step with and without a competing process.

On a shared 2-core machine, another process taking one core slowed training 3.5x: OpenMP
threads spin at every barrier waiting for the thread that lost its core. This measures the
candidates (the thread count, OMP_WAIT_POLICY=PASSIVE) on the real training step
(EfficientNet-Lite0, AdamW, channels_last), each in a fresh process because the OpenMP
settings are read when torch loads.

    .venv/bin/python -m zerodefect.bench_threads [--steps 12] [--size 224] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time


def _burn(stop_at: float) -> None:
    """A competing process: one busy core until `stop_at` (bounded)."""
    x = 0
    while time.time() < stop_at:
        x += 1


def _measure(steps: int, size: int, batch: int, threads: int | None) -> float:
    import torch

    from zerodefect.models.classifier import build_classifier

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, _ = build_classifier("tf_efficientnet_lite0", ["good", "bad"], "good", None)
    model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8)
    targets = torch.randint(0, 2, (batch,)).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for step in range(steps + 2):
        tick = time.perf_counter()
        loss = loss_fn(model.logits(images)[:, 0], targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:  # the first steps allocate
            times.append(time.perf_counter() - tick)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", nargs=2, metavar=("THREADS", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        threads = int(args.child[0]) or None
        print(json.dumps({"step_s": _measure(int(args.child[1]), args.size, args.batch, threads)}))
        return
    # The parent may run with zerodefect's own default (PASSIVE): each case sets its policy.
    cases = [
        ("2 threads, libgomp default (spin, then sleep)", {"OMP_WAIT_POLICY": ""}, 0),
        ("2 threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, 0),
        ("2 threads, GOMP_SPINCOUNT=10000", {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"}, 0),
        ("1 thread", {"OMP_WAIT_POLICY": ""}, 1),
    ]
    rows = []
    for competing in (False, True):
        for label, env, threads in cases:
            burner = None
            if competing:
                burner = multiprocessing.Process(target=_burn, args=(time.time() + 600,), daemon=True)
                burner.start()
            try:
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "zerodefect.bench_threads",
                        "--size",
                        str(args.size),
                        "--batch",
                        str(args.batch),
                        "--child",
                        str(threads),
                        str(args.steps),
                    ],
                    env={k: v for k, v in {**os.environ, **env}.items() if v},
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=900,
                )
            finally:
                if burner is not None:
                    burner.terminate()
                    burner.join()
            step = json.loads(out.stdout.strip().splitlines()[-1])["step_s"]
            rows.append({"case": label, "competing_process": competing, "step_s": round(step, 3)})
            print(f"{label:40s} competing={competing!s:5s} {step:.3f} s/step", flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
