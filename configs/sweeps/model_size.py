"""mLSTM hidden size 64 ... 1024 at equal data: the paper's model-size finding, scaled down.

Puri et al. (2018), one epoch of Amazon reviews each: 256 units 1.541 BPC / SST 53.2 %,
4096 units 1.073 / 91.5 %, 8192 units 1.036 / 93.8 % — larger mLSTMs reach lower BPC and
transfer better. Here every size reads the same number of characters of the SST train +
val sentences (configs/model_size.py); with a CPU budget that number is what the budget
allows, 70 % of it for training and 30 % left for SST transfer of the five models.

    python -m lmscale.sweep --config=configs/model_size.py --sweep=configs/sweeps/model_size.py \
        --workdir=runs/sweeps/model_size --cpu_budget_minutes=25 \
        --transfer_train=$SST/train.csv --transfer_val=$SST/val.csv --transfer_test=$SST/test.csv
"""

import math

HIDDEN = [64, 128, 256, 512, 1024]
EMBED, VOCAB = 64, 257  # configs/model_size.py
CHARS_PER_STEP = 32 * 128  # batch x seq_len of configs/model_size.py
CORPUS_CHARS = 800_000  # SST train + val sentences, about
FULL_CHARS = 4 * CORPUS_CHARS  # without a budget: four epochs
CPU_FLOPS = 40e9  # effective training FLOP/s of a small mLSTM on 2 CPU cores (measured)
CPU_OVERHEAD_S = 10  # per point: start, compilation, validation
TRAIN_SHARE = 0.7  # of the budget; the rest is left for transfer (featurizing ~1 M characters per model)


def train_flops_per_char(hidden):
    """6 x the matmul parameters per character: W_mx, W_mh, W_x, W_h and the output layer."""
    return 6 * (EMBED * hidden + hidden * hidden + 4 * EMBED * hidden + 4 * hidden * hidden + hidden * VOCAB)


def get_sweep(cpu_budget_minutes=None):
    chars = FULL_CHARS
    if cpu_budget_minutes is not None:
        seconds = cpu_budget_minutes * 60 * TRAIN_SHARE - CPU_OVERHEAD_S * len(HIDDEN)
        chars = min(FULL_CHARS, max(seconds, 30) * CPU_FLOPS / sum(map(train_flops_per_char, HIDDEN)))
    steps = max(20, math.ceil(chars / CHARS_PER_STEP))
    return {
        "description": (f"mLSTM hidden size at equal data: {steps} steps x {CHARS_PER_STEP} characters "
                        f"({steps * CHARS_PER_STEP / 1e6:.2f} M) of SST train + val sentences each, "
                        f"Adam 2e-3, linear decay."),
        "grid": {"model.hidden": HIDDEN},
        "derived": lambda p: {"train.steps": steps},
    }
