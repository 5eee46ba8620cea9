"""Base run of the lr_rules sweep: a small character mLSTM on tinyshakespeare.

The paper's batch study (Puri et al. 2018) scaled down: batches and the base batch divided
by the same factor, so B / base_batch_size (16 ... 256) and the learning rates of each rule
are the paper's. configs/sweeps/lr_rules.py sets the batch, the rule, the cap and the steps.

    python -m lmscale.sweep --config=configs/lr_rules.py --sweep=configs/sweeps/lr_rules.py \
        --workdir=runs/sweeps/lr_rules --cpu_budget_minutes=20
"""

from lmscale.config import default_config
from lmscale.datasets import data_path

TINYSHAKESPEARE = data_path("tinyshakespeare", "input.txt")  # python -m lmscale.datasets fetch tinyshakespeare


def get_config():
    config = default_config()
    config.data.train = TINYSHAKESPEARE  # 1.1 MB
    config.data.split = "18,1,0"
    config.data.shard_tokens = 32768  # small shards so that the small corpus splits
    config.model.kind = "mlstm"
    config.model.hidden = 128
    config.model.embed = 32
    config.train.steps = 1000
    config.train.batch_size = 32
    config.train.seq_len = 64
    config.train.log_every = 10
    config.train.eval_every = 0  # validation at the end only
    config.train.eval_batch_size = 32
    config.optim.lr = 5e-4  # the paper's: 5e-4 at base batch 128 (here 128 / 64)
    config.optim.base_batch_size = 2
    config.optim.lr_scaling = "none"
    config.optim.lr_max = 0.0
    config.optim.schedule = "linear"  # linear decay to 0 over the run, as the paper's
    config.optim.clip = 1.0
    config.checkpoint.every = 100000  # at the end (and on SIGTERM) only
    config.lock()
    return config
