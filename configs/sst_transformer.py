"""An in-domain transformer LM for the SST sentiment-transfer demo (the transformer's
counterpart of configs/sst_lm.py), on SentencePiece subwords, in ~20 CPU-minutes (11 min wall
on 2 cores, measured when its 2048 tokens a step were 32 x 64 rather than 16 x 128).

Trains on the SST binary *train + val* sentences only (not test). Each sentence is a
document; with ``data.reset_on_documents`` no token attends across sentences and positions
restart at 0 for each, exactly as featurization later reads one sentence from position 0.
Transfer features are the final block's output at the last token (``--pooling=mean`` for
the average over the sentence).

    python -m lmscale.train --config=configs/sst_transformer.py --workdir=runs/sst_transformer
    SST=$(python -m lmscale.datasets fetch sst_binary)
    python -m lmscale.transfer --workdir=runs/sst_transformer --train=$SST/train.csv \
        --val=$SST/val.csv --test=$SST/test.csv --text_column=sentence --label_column=label
"""

from lmscale.config import default_config
from lmscale.datasets import data_path

SST = data_path("sst_binary")  # python -m lmscale.datasets fetch sst_binary


def get_config():
    config = default_config()
    config.data.train = f"{SST}/train.csv,{SST}/val.csv"  # ~0.8 MB of movie-review sentences
    config.data.text_column = "sentence"
    config.data.split = "18,1,0"  # ~5 % of the shards held out for validation BPC
    config.data.shard_tokens = 16384  # small shards so that the tiny corpus splits
    config.data.reset_on_documents = True  # one sentence per segment
    config.data.tokenizer = "sentencepiece"
    config.data.vocab_size = 2000  # ~3.5 bytes per piece on this text
    config.model.kind = "transformer"
    config.model.layers = 4
    config.model.d_model = 256
    config.model.heads = 4
    config.model.d_ff = 1024
    config.model.max_len = 128  # longer than any SST sentence in pieces
    config.model.norm = "pre"
    config.model.weight_norm = False
    config.model.tie_embeddings = True
    config.model.dropout = 0.1  # a small corpus read many times
    config.train.steps = 1200
    config.train.batch_size = 16
    config.train.seq_len = 128  # = model.max_len: every position trained (2048 tokens a step)
    config.train.log_every = 50
    config.train.eval_every = 300
    config.train.eval_batch_size = 16
    config.optim.lr = 1e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 100
    config.checkpoint.every = 300
    config.lock()
    return config
