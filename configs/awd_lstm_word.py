"""AWD-LSTM, word level (Merity, Keskar & Socher 2017), as salesforce/awd-lstm-lm trains it on
the Penn Treebank.

Source: awd-lstm-lm README, "Penn Treebank (PTB)":
    python main.py --batch_size 20 --data data/penn --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 500
with main.py's defaults for everything else (model LSTM, --emsize 400 --nhid 1150 --nlayers 3,
--lr 30 --clip 0.25 --bptt 70, --dropout 0.4 --dropoute 0.1 --wdrop 0.5, --alpha 2 --beta 1,
--wdecay 1.2e-6, --nonmono 5, --optimizer sgd, i.e. NT-ASGD, tied weights; validation batch 10).
README: ~61.2 / 58.8 validation / test perplexity before fine-tuning; awd's finetune.py (ASGD
averaging from its first step, from the best model, until the same rule fires) gives its
58.8 / 56.5: here a second run, --config.optim.name=asgd
--config.train.start_from=runs/awd_ptb/best --workdir=runs/awd_ptb_ft (README).
WikiText-2 (README "WikiText-2 (WT2)": --epochs 750 --dropouth 0.2 --seed 1882, batch 80,
dropouti 0.65): --config.data.train=data/wikitext-2/train.txt
--config.data.val=data/wikitext-2/valid.txt --config.data.test=data/wikitext-2/test.txt
--config.train.batch_size=80 --config.model.hidden_dropout=0.2
--config.model.input_dropout=0.65 --config.seed=1882 --config.train.epochs=750
--config.checkpoint.every=390 (one epoch of WT2's 2.1M tokens at 80 x ~67.8; validation is
once an epoch whatever its length, train.eval_every_epochs=1).

Data: awd-lstm-lm's getdata.sh files (Mikolov's PTB, already <unk>-ed): train, valid and test
as whole splits (data.val, data.test), words with an <eos> per line (data.tokenizer="word"),
the vocabulary from the training file (10,000 words + <pad>).
Differences from the PyTorch code: NT-ASGD keeps the learning-rate schedule when it switches
(awd re-creates ASGD at --lr); each variable-BPTT length is rounded to a multiple of
train.bptt_bucket (one compiled step per length). Validation comes at the first step at or
past each epoch's end (awd: after the epoch's last batch; NT-ASGD counts these passes).

    python -m lmscale.train --config=configs/awd_lstm_word.py --workdir=runs/awd_ptb
    python -m lmscale.eval --workdir=runs/awd_ptb --split=test --best --batch_size=1
(test perplexity at batch 1, as awd's test_batch_size: one state through the whole split.)
"""

from lmscale.config import default_config


def get_config():
    config = default_config()
    config.seed = 141
    config.data.train = "data/penn/train.txt"  # awd-lstm-lm getdata.sh; one sentence per line
    config.data.val = "data/penn/valid.txt"
    config.data.test = "data/penn/test.txt"
    config.data.tokenizer = "word"
    config.model.kind = "lstm"
    config.model.layers = 3  # --nlayers 3
    config.model.embed = 400  # --emsize 400
    config.model.hidden = 1150  # --nhid 1150 (the last layer is 400 wide: tied)
    config.model.tie_embeddings = True  # args.tied = True
    config.model.weight_norm = False  # awd has none
    config.model.io_init = "uniform"  # model.py init_weights: embedding and decoder U(-0.1, 0.1)
    config.model.two_biases = True  # torch.nn.LSTM's bias_ih and bias_hh, trained apart
    config.model.embed_dropout = 0.1  # --dropoute
    config.model.input_dropout = 0.4  # --dropouti (README: 0.4)
    config.model.hidden_dropout = 0.25  # --dropouth (README: 0.25)
    config.model.output_dropout = 0.4  # --dropout
    config.model.weight_dropout = 0.5  # --wdrop
    config.model.ar_alpha = 2.0  # --alpha
    config.model.tar_beta = 1.0  # --beta
    config.train.batch_size = 20  # --batch_size 20
    config.train.seq_len = 70  # --bptt 70
    config.train.variable_bptt = True  # awd's length draw, LR scaled by length / bptt
    config.train.epochs = 500.0  # --epoch 500
    config.train.steps = 10**9  # bounded by train.epochs
    config.train.eval_every_epochs = 1.0  # awd validates once an epoch (NT-ASGD counts these)
    config.train.eval_batch_size = 10  # eval_batch_size = 10
    config.train.log_every = 200  # --log-interval 200
    config.optim.name = "ntasgd"  # --optimizer sgd: SGD, then ASGD on the non-monotone trigger
    config.optim.ntasgd_nonmono = 5  # --nonmono 5
    config.optim.lr = 30.0  # --lr 30
    config.optim.base_batch_size = 20
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 0
    config.optim.clip = 0.25  # --clip 0.25
    config.optim.weight_decay = 1.2e-6  # --wdecay, coupled L2 as torch SGD's weight_decay
    config.checkpoint.every = 686  # ≈ one epoch: 930k training tokens at 20 x ~67.8 (mean length)
    config.checkpoint.keep_best = True  # awd saves the best validation model and tests it
    config.lock()
    return config
