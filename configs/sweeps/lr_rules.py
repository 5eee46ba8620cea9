"""Global batch x learning-rate rule: the paper's large-batch study, scaled down.

Puri et al. (2018) trained the 4096-unit mLSTM with Adam 5e-4 at batch 128 and grew the
global batch from 2k to 32k: linear and square-root scaling of the learning rate diverged
at >= 16k, while a constant 3e-3 with linear decay converged best. Here batches and the
base batch are divided by 64 (2k -> 32, ..., 32k -> 512; base 128 -> 2), so B / base and
every rule's learning rate are the paper's:

    rule        2k (32)   8k (128)   16k (256)   32k (512)
    none        5e-4      5e-4       5e-4        5e-4
    sqrt        2e-3      4e-3       5.7e-3      8e-3
    linear      8e-3      3.2e-2     6.4e-2      0.128
    linear+cap  3e-3      3e-3       3e-3        3e-3    (linear capped at 3e-3 = the paper's constant 3e-3)

Every point reads the same number of characters (as the paper compares batches over the
same data), so a larger batch takes fewer steps; the learning rate decays linearly to 0.

    python -m lmscale.sweep --config=configs/lr_rules.py --sweep=configs/sweeps/lr_rules.py \
        --workdir=runs/sweeps/lr_rules --cpu_budget_minutes=20 --parallel=2
"""

import math

BATCHES = [32, 128, 256, 512]  # the paper's 2k, 8k, 16k, 32k divided by 64
SEQ_LEN = 64  # configs/lr_rules.py
CORPUS_CHARS = 1_115_394  # tinyshakespeare
FULL_CHARS = 3 * CORPUS_CHARS  # without a budget: three epochs (the paper's run length)
CPU_CHARS_PER_S = 32_000  # a 128-unit mLSTM on 2 CPU cores (measured, batches 32-512)
CPU_OVERHEAD_S = 10  # per point: start, compilation, validation


def get_sweep(cpu_budget_minutes=None):
    points = len(BATCHES) * 4
    chars = FULL_CHARS
    if cpu_budget_minutes is not None:
        per_point = cpu_budget_minutes * 60 / points - CPU_OVERHEAD_S
        chars = min(FULL_CHARS, max(per_point, 5) * CPU_CHARS_PER_S)
    return {
        "description": (f"Global batch x learning-rate rule on the base config's model (benchmarks: a "
                        f"128-unit mLSTM on tinyshakespeare); "
                        f"batches = the paper's / 64, base batch 2, 5e-4 at the base; "
                        f"{chars / 1e6:.2f} M characters per point, linear decay to 0."),
        "grid": {
            "train.batch_size": BATCHES,
            "rule": {
                "none": {"optim.lr_scaling": "none", "optim.lr_max": 0.0},
                "sqrt": {"optim.lr_scaling": "sqrt", "optim.lr_max": 0.0},
                "linear": {"optim.lr_scaling": "linear", "optim.lr_max": 0.0},
                "linear+cap": {"optim.lr_scaling": "linear", "optim.lr_max": 3e-3},
            },
        },
        "derived": lambda p: {"train.steps": math.ceil(chars / (p["train.batch_size"] * SEQ_LEN))},
    }
