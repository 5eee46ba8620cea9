"""A CPU-sized AWD-LSTM character model on Tiny Shakespeare: configs/awd_lstm_char.py's recipe
(locked and weight dropout, Adam with coupled L2, clip 0.25) scaled down to learn in a few
minutes on 2 CPU cores, at about the quickstart mLSTM's cost per character.

Changes for a short CPU run: 2 layers of 256, batch 32 x 128, lighter dropout (a few minutes
of training underfits), a linear decay instead of --when drops, a fixed BPTT length
(variable BPTT compiles one step per length bucket: dozens of compiles on a CPU), and
untied embeddings: tied (last layer 128), the model sat on the unigram plateau for the
first 150 steps (train bpc 4.79 at step 150; untied: 3.78 at step 120; see
benchmarks/README.md). --config.model.tie_embeddings=True gives awd's tying back.

    python -m lmscale.train --config=configs/awd_lstm_char_cpu.py --workdir=runs/awd_char_cpu
"""

import os

from lmscale.config import config_from_file
from lmscale.datasets import data_path

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = config_from_file(os.path.join(HERE, "awd_lstm_char.py"))
    config.unlock()
    config.data.train = data_path("tinyshakespeare", "input.txt")  # python -m lmscale.datasets fetch tinyshakespeare
    config.data.val = config.data.test = ""  # cut from data.train by data.split
    config.data.split = "98,1,1"
    config.data.shard_tokens = 2**27
    config.model.tie_embeddings = False  # see above
    config.model.layers = 2
    config.model.embed = 128
    config.model.hidden = 256
    config.model.input_dropout = 0.05
    config.model.hidden_dropout = 0.05
    config.model.output_dropout = 0.1
    config.model.weight_dropout = 0.1
    config.train.batch_size = 32
    config.train.seq_len = 128
    config.train.variable_bptt = False
    config.train.epochs = 0.0
    config.train.steps = 600
    config.train.eval_every = 200
    config.train.eval_every_epochs = 0.0  # in steps, not awd's once an epoch
    config.train.eval_batch_size = 32
    config.train.log_every = 20
    config.optim.lr = 3e-3  # as the quickstart: a short run of a small model
    config.optim.base_batch_size = 32
    config.optim.schedule = "linear"
    config.optim.warmup_steps = 20
    config.optim.lr_drop_epochs = ""
    config.checkpoint.every = 200
    config.lock()
    return config
