"""AWD-LSTM, character level (Merity, Keskar & Socher 2018, "An Analysis of Neural Language
Modeling at Multiple Scales"), as salesforce/awd-lstm-lm trains it on enwik8 (1.232 test bpc).

Source: awd-lstm-lm README, "Character level enwik8 with LSTM":
    python -u main.py --epochs 50 --nlayers 3 --emsize 400 --nhid 1840 --alpha 0 --beta 0
        --dropoute 0 --dropouth 0.1 --dropouti 0.1 --dropout 0.4 --wdrop 0.2 --wdecay 1.2e-6
        --bptt 200 --batch_size 128 --optimizer adam --lr 1e-3 --data data/enwik8 --when 25 35
with main.py's defaults for the rest: tied weights (args.tied = True), --clip 0.25,
variable-length BPTT, validation batch 10.
PTB-char (README "Character level Penn Treebank (PTB) with LSTM": --epochs 500 --emsize 200
--nhid 1000 --dropouth 0.25 --dropouti 0.1 --dropout 0.1 --wdrop 0.5 --bptt 150 --lr 2e-3
--when 300 400): awd reads getdata.sh's ptb.char.{train,valid,test}.txt (characters separated
by spaces, "_" between words) as words, each line ending in <eos>, so the word tokenizer:
    --config.data.train=data/pennchar/train.txt --config.data.val=data/pennchar/valid.txt
    --config.data.test=data/pennchar/test.txt --config.data.tokenizer=word
    --config.model.embed=200 --config.model.hidden=1000 --config.model.hidden_dropout=0.25
    --config.model.output_dropout=0.1 --config.model.weight_dropout=0.5 --config.train.seq_len=150
    --config.optim.lr=2e-3 --config.train.epochs=500 --config.optim.lr_drop_epochs=300,400
    --config.checkpoint.every=265   # ~ one epoch (validation is once an epoch, as awd's)
awd's "bpc" there is bits per character token: compare lmscale's ``bits_per_token`` (its
``bpc`` divides by the file's bytes, which count each character's separating space too).

Data: the bytes of enwik8, split as awd's prep_enwik8.py splits it: the first 90M bytes train,
the next 5M validation, the last 5M test (prep_enwik8.py writes each byte as a number for its
word loader; lmscale reads the bytes themselves):
    head -c 90000000 enwik8 > data/enwik8/train.txt
    tail -c +90000001 enwik8 | head -c 5000000 > data/enwik8/valid.txt
    tail -c 5000000 enwik8 > data/enwik8/test.txt

    python -m lmscale.train --config=configs/awd_lstm_char.py --workdir=runs/awd_enwik8
    python -m lmscale.eval --workdir=runs/awd_enwik8 --split=test --best --batch_size=1
(awd scores the test set at batch 1: one state carried through the whole split.)
"""

from lmscale.config import default_config


def get_config():
    config = default_config()
    config.data.train = "data/enwik8/train.txt"  # enwik8's first 90M bytes; bytes as tokens
    config.data.val = "data/enwik8/valid.txt"  # the next 5M
    config.data.test = "data/enwik8/test.txt"  # the last 5M
    config.data.txt_mode = "file"
    config.data.shard_tokens = 10**6
    config.model.kind = "lstm"  # --model LSTM (default)
    config.model.layers = 3  # --nlayers 3
    config.model.embed = 400  # --emsize 400
    config.model.hidden = 1840  # --nhid 1840 (the last layer is 400 wide: tied)
    config.model.tie_embeddings = True  # args.tied = True
    config.model.weight_norm = False  # awd has none
    config.model.io_init = "uniform"  # model.py init_weights: embedding and decoder U(-0.1, 0.1)
    config.model.two_biases = True  # torch.nn.LSTM's bias_ih and bias_hh, trained apart
    config.model.embed_dropout = 0.0  # --dropoute 0
    config.model.input_dropout = 0.1  # --dropouti 0.1
    config.model.hidden_dropout = 0.1  # --dropouth 0.1
    config.model.output_dropout = 0.4  # --dropout 0.4
    config.model.weight_dropout = 0.2  # --wdrop 0.2
    config.model.ar_alpha = 0.0  # --alpha 0
    config.model.tar_beta = 0.0  # --beta 0
    config.train.batch_size = 128  # --batch_size 128
    config.train.seq_len = 200  # --bptt 200
    config.train.variable_bptt = True  # main.py's length draw, LR scaled by length / bptt
    config.train.epochs = 50.0  # --epochs 50
    config.train.steps = 10**9  # bounded by train.epochs
    config.train.eval_every_epochs = 1.0  # awd validates once an epoch
    config.train.eval_batch_size = 10  # eval_batch_size = 10
    config.train.log_every = 200  # --log-interval 200
    config.optim.name = "adam"  # --optimizer adam
    config.optim.lr = 1e-3  # --lr 1e-3
    config.optim.base_batch_size = 128
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 0
    config.optim.clip = 0.25  # --clip 0.25 (default)
    config.optim.weight_decay = 1.2e-6  # --wdecay 1.2e-6, coupled L2 as torch Adam's weight_decay
    config.optim.lr_drop_epochs = "25,35"  # --when 25 35: divide the learning rate by 10
    config.optim.lr_drop_factor = 0.1
    config.checkpoint.every = 3500  # ≈ one epoch of 90M bytes at 128 x 200
    config.checkpoint.keep_best = True  # awd saves the best validation model and tests it
    config.lock()
    return config
