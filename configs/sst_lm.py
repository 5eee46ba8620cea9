"""An in-domain character LM for the SST sentiment-transfer demo, trained in ~15 CPU-minutes.

Trains on the SST binary *train + val* sentences only (unsup.csv is train + val + test: a
model pretrained on it has read the test sentences). Each sentence is a document and the
RNN state is reset at document starts, as featurization starts every text from zeros.

    SST=$(python -m lmscale.datasets fetch sst_binary | head -1)
    python -m lmscale.train --config=configs/sst_lm.py --workdir=runs/sst_lm
    python -m lmscale.transfer --workdir=runs/sst_lm --train=$SST/train.csv \
        --val=$SST/val.csv --test=$SST/test.csv
"""

from lmscale.config import default_config
from lmscale.datasets import data_path

SST = data_path("sst_binary")  # python -m lmscale.datasets fetch sst_binary


def get_config():
    config = default_config()
    config.data.train = f"{SST}/train.csv,{SST}/val.csv"  # ~0.8 MB of movie-review sentences
    config.data.text_column = "sentence"
    config.data.split = "18,1,0"  # ~5 % of the shards held out for validation BPC
    config.data.shard_tokens = 32768  # small shards so that the tiny corpus splits
    config.data.reset_on_documents = True  # one sentence per document, state zeroed between
    config.model.kind = "mlstm"
    config.model.hidden = 512
    config.model.embed = 64
    config.train.steps = 1500  # ~6 M characters, ~8 passes over the text
    config.train.batch_size = 32
    config.train.seq_len = 128
    config.train.log_every = 50
    config.train.eval_every = 250
    config.train.eval_batch_size = 16
    config.optim.lr = 2e-3
    config.optim.schedule = "linear"
    config.optim.warmup_steps = 50
    config.checkpoint.every = 250
    config.lock()
    return config
