"""The paper's model: a 4096-d single-layer mLSTM with weight norm and a 64-d embedding.

Radford et al. / Puri et al.: truncated BPTT over 256 characters, Adam at 5e-4 per 128
sequences, gradients clipped to norm 1, learning rate decayed linearly to 0 over one
epoch of the data. Point data.train at your corpus (a prepared dataset folder, or text
paths/globs), e.g. the Amazon reviews prepared with --split=1000,1,1. As sentiment-discovery
reads them (analysis/reproduction.md, data_utils): the reviews in a random order ("each of
the three sets are internally shuffled"; here the whole text is shuffled before the split
cuts it, data.shuffle_documents, when the text is prepared in the workdir; lmscale.prepare
--shuffle_documents=SEED for a dataset prepared apart), and the state reset at the start of
each of its shards of 100 reviews (data.reset_every_documents=100).

    python -m lmscale.train --config=configs/mlstm4096.py --workdir=runs/mlstm4096 \
        --config.data.train=/data/amazon_prepared
"""

from lmscale.config import default_config


def get_config():
    config = default_config()
    config.data.train = "python_stdlib"  # replace with your corpus
    config.data.split = "1000,1,1"  # the paper's train/val/test shard counts
    config.data.shuffle_documents = True  # the reviews in a random order (the same for every run)
    config.data.reset_every_documents = 100  # the seed's samples_per_shard: state reset every 100 reviews
    config.model.kind = "mlstm"
    config.model.hidden = 4096
    config.model.embed = 64
    config.model.layers = 1
    config.model.weight_norm = True  # on the recurrent weights only
    config.model.two_biases = True  # sentiment-discovery's b_ih and b_hh, trained apart
    config.model.io_init = "pytorch"  # its RNNModel's nn.Embedding N(0, 1), nn.Linear decoder U(+-1/sqrt(H))
    config.train.batch_size = 128
    config.train.seq_len = 256
    config.train.steps = 10_000_000  # an upper bound; train.epochs ends the run
    config.train.epochs = 1.0  # one pass over the data, as the paper
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.eval_batch_size = 128
    config.optim.lr = 5e-4
    config.optim.schedule = "linear"
    config.optim.decay_epochs = 1.0  # linear decay to 0 over one epoch, as the paper
    config.optim.clip = 1.0
    config.checkpoint.every = 5000
    config.lock()
    return config
