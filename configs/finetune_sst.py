"""Fine-tune an LM on SST binary sentiment (single-label, softmax over 2 classes).

    python -m lmscale.finetune --config=configs/finetune_sst.py --workdir=runs/sst_ft \
        --config.init_from=runs/sst_lm

The head reads the model's default state (mLSTM/LSTM: the cell state, the sentiment neuron's;
transformer: the hidden state), its last value and its mean over the text; the LM is frozen for the first 100 steps while the head warms up, then everything
trains with a slanted-triangular schedule (head at 10x the LM's peak learning rate).
"""

from lmscale.config import default_config
from lmscale.datasets import data_path

SST = data_path("sst_binary")  # python -m lmscale.datasets fetch sst_binary


def get_config():
    config = default_config()
    config.init_from = ""  # --config.init_from=LM_WORKDIR
    ft = config.finetune
    ft.train, ft.val, ft.test = f"{SST}/train.csv", f"{SST}/val.csv", f"{SST}/test.csv"
    ft.text_column, ft.label_column = "sentence", "label"
    ft.state = ""  # the model's default (mLSTM: cell; transformer: hidden)
    ft.pooling = "last,mean"
    ft.head_dropout = 0.1
    ft.freeze_steps = 100
    ft.head_lr = 1e-2
    ft.best_metric = "accuracy"
    config.train.steps = 600  # ~5.5 epochs of 6,920 sentences at batch 64
    config.train.batch_size = 64
    config.train.log_every = 25
    config.train.eval_every = 100
    config.train.eval_batch_size = 128
    config.optim.lr = 1e-3
    config.optim.schedule = "slanted_triangular"
    config.optim.stlr_cut_frac = 0.1
    config.optim.stlr_ratio = 32.0
    config.checkpoint.every = 200
    config.checkpoint.keep = 2
    config.lock()
    return config
