"""Base run of the model_size sweep: a character mLSTM on the SST train + val sentences.

configs/sweeps/model_size.py sets the hidden size (64 ... 1024) and the steps; every size
reads the same characters, as the paper's sizes each read one epoch of Amazon reviews.
Sentences are documents (the state is zeroed between them, as featurization starts every
text from zeros), so the final models go straight into SST sentiment transfer.

    python -m lmscale.sweep --config=configs/model_size.py --sweep=configs/sweeps/model_size.py \
        --workdir=runs/sweeps/model_size --cpu_budget_minutes=25 \
        --transfer_train=$SST/train.csv --transfer_val=$SST/val.csv --transfer_test=$SST/test.csv
"""

from lmscale.config import default_config
from lmscale.datasets import data_path

SST = data_path("sst_binary")  # python -m lmscale.datasets fetch sst_binary (override data.train)


def get_config():
    config = default_config()
    config.data.train = f"{SST}/train.csv,{SST}/val.csv"  # ~0.8 MB of movie-review sentences
    config.data.text_column = "sentence"
    config.data.split = "18,1,0"
    config.data.shard_tokens = 32768
    config.data.reset_on_documents = True
    config.model.kind = "mlstm"
    config.model.hidden = 512
    config.model.embed = 64
    config.train.steps = 200
    config.train.batch_size = 32
    config.train.seq_len = 128
    config.train.log_every = 10
    config.train.eval_every = 0  # validation at the end only
    config.train.eval_batch_size = 16
    config.optim.lr = 2e-3
    config.optim.schedule = "linear"
    config.optim.warmup_steps = 20
    config.checkpoint.every = 100000  # at the end (and on SIGTERM) only
    config.lock()
    return config
