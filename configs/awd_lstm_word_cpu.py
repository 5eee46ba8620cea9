"""A CPU-sized AWD-LSTM word model on Tiny Shakespeare: configs/awd_lstm_word.py's recipe
(tied weights, embedding / locked / weight dropout, AR/TAR, NT-ASGD with coupled L2,
variable-length BPTT) scaled down to learn in a few minutes on 2 CPU cores.

Data: Tiny Shakespeare where `python -m lmscale.datasets fetch tinyshakespeare` puts it
(`$LMSCALE_DATA/tinyshakespeare/input.txt`, default ~/.cache/lmscale), ~243k words with an <eos> per line; words seen fewer than 3 times in the
training split are <unk> (~7k ids). Measured numbers: benchmarks/README.md.

    python -m lmscale.train --config=configs/awd_lstm_word_cpu.py --workdir=runs/awd_word_cpu
"""

import os

from lmscale.config import config_from_file
from lmscale.datasets import data_path

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = config_from_file(os.path.join(HERE, "awd_lstm_word.py"))
    config.unlock()
    config.seed = 0
    config.data.train = data_path("tinyshakespeare", "input.txt")  # python -m lmscale.datasets fetch tinyshakespeare
    config.data.val = config.data.test = ""  # cut from the one file instead:
    config.data.split = "18,1,1"  # 20 shards of ~12k words: ~12k validation words
    config.data.word_min_count = 3
    config.model.layers = 2
    config.model.embed = 200
    config.model.hidden = 400
    config.model.embed_dropout = 0.1
    config.model.input_dropout = 0.3
    config.model.hidden_dropout = 0.2
    config.model.output_dropout = 0.3
    config.model.weight_dropout = 0.3
    config.train.batch_size = 20
    config.train.seq_len = 35
    config.train.epochs = 0.0
    config.train.steps = 800  # ~2.5 epochs of the training words
    config.train.eval_every = 100  # ~a third of an epoch; NT-ASGD counts these passes
    config.train.eval_every_epochs = 0.0  # in steps, not awd's once an epoch
    config.train.eval_batch_size = 10
    config.train.log_every = 50
    config.optim.lr = 20.0
    config.optim.ntasgd_nonmono = 0  # a short run: average from the first pass worse than the best
    config.checkpoint.every = 200
    config.lock()
    return config
