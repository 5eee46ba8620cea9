"""4-layer QRNN with a tied adaptive softmax on WikiText-103 (Merity, Keskar & Socher 2018,
"An Analysis of Neural Language Modeling at Multiple Scales"; the "12 hours on one GPU" run:
33.0 test perplexity).

Source: awd-lstm-lm README, "Word level WikiText-103 (WT103) with QRNN":
    python -u main.py --epochs 14 --nlayers 4 --emsize 400 --nhid 2500 --alpha 0 --beta 0
        --dropoute 0 --dropouth 0.1 --dropouti 0.1 --dropout 0.1 --wdrop 0 --wdecay 0
        --bptt 140 --batch_size 60 --optimizer adam --lr 1e-3 --data data/wikitext-103
        --save WT103.12hr.QRNN.pt --when 12 --model QRNN
main.py's defaults otherwise (--clip 0.25, tied weights, validation batch 10), and its
SplitCrossEntropyLoss with splits [2800, 20000, 76000] for a vocabulary over 75,000 words
(WT103: 267,735). The QRNN's first layer has a window of 2, the others 1 (awd model.py).

Data: awd-lstm-lm getdata.sh's wiki.{train,valid,test}.tokens (already <unk>-ed) as whole
splits; a word tokenizer with an <eos> per line keeps all 267k training words. One epoch is
~103 M words / (60 x ~137) ≈ 12.5k steps. The cut-offs split a differently ordered
vocabulary: lmscale numbers words by descending training count (<pad>, <unk>, <eos> first),
awd's data.py by first appearance in train, valid, test, so its head cluster holds the first
2,800 distinct words of the file and lmscale's the 2,800 most frequent: a different
clustering, not awd's model exactly (the 33.0 need not reproduce to the decimal).

    python -m lmscale.train --config=configs/qrnn_wt103.py --workdir=runs/qrnn_wt103
    python -m lmscale.eval --workdir=runs/qrnn_wt103 --split=test --best --batch_size=1
(test perplexity at batch 1, as awd's test_batch_size.)
"""

from lmscale.config import default_config


def get_config():
    config = default_config()
    config.data.train = "data/wikitext-103/wiki.train.tokens"
    config.data.val = "data/wikitext-103/wiki.valid.tokens"
    config.data.test = "data/wikitext-103/wiki.test.tokens"
    config.data.tokenizer = "word"
    config.model.kind = "qrnn"  # --model QRNN
    config.model.layers = 4  # --nlayers 4
    config.model.embed = 400  # --emsize 400
    config.model.hidden = 2500  # --nhid 2500 (the last layer is 400 wide: tied)
    config.model.tie_embeddings = True
    config.model.weight_norm = False
    config.model.io_init = "uniform"  # model.py init_weights: embedding and decoder U(-0.1, 0.1)
    config.model.adaptive_cutoffs = "2800,20000,76000"  # splitcross splits for WT103
    config.model.qrnn_window = 2
    config.model.embed_dropout = 0.0  # --dropoute 0
    config.model.input_dropout = 0.1  # --dropouti 0.1
    config.model.hidden_dropout = 0.1  # --dropouth 0.1
    config.model.output_dropout = 0.1  # --dropout 0.1
    config.model.weight_dropout = 0.0  # --wdrop 0
    config.model.ar_alpha = 0.0  # --alpha 0
    config.model.tar_beta = 0.0  # --beta 0
    config.train.batch_size = 60  # --batch_size 60
    config.train.seq_len = 140  # --bptt 140
    config.train.variable_bptt = True
    config.train.epochs = 14.0  # --epochs 14
    config.train.steps = 10**9  # bounded by train.epochs
    config.train.eval_every_epochs = 1.0  # awd validates once an epoch
    config.train.eval_batch_size = 10
    config.train.log_every = 200
    config.optim.name = "adam"  # --optimizer adam (no NT-ASGD: awd switches only for sgd)
    config.optim.lr = 1e-3  # --lr 1e-3
    config.optim.base_batch_size = 60
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 0
    config.optim.clip = 0.25  # main.py default --clip
    config.optim.weight_decay = 0.0  # --wdecay 0
    config.optim.lr_drop_epochs = "12"  # --when 12: lr / 10 after epoch 12
    config.optim.lr_drop_factor = 0.1
    config.checkpoint.every = 2000
    config.checkpoint.keep_best = True  # awd saves the best validation model and tests it
    config.lock()
    return config
