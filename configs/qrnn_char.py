"""AWD-QRNN, character level: configs/awd_lstm_char.py (the awd-lstm-lm enwik8 command) with
``--model QRNN`` and the QRNN architecture of the awd-lstm-lm README.

The README gives no character-level QRNN command; this takes the enwik8 LSTM command (data,
--bptt 200, --batch_size 128, --optimizer adam --lr 1e-3, --when 25 35, --wdecay 1.2e-6, no
AR/TAR) and the QRNN model of its "Word level WikiText-103 (WT103) with QRNN" command:
    --nlayers 4 --emsize 400 --nhid 2500 --dropoute 0 --dropouth 0.1 --dropouti 0.1
    --dropout 0.1 --wdrop 0 --model QRNN
model.py's QRNN: window 2 on the first layer and 1 above (save_prev_x=True: the previous
batch's last input is carried), output gate, zoneout 0, weight drop on each layer's
projection, tied weights (the last layer 400 wide).

    python -m lmscale.train --config=configs/qrnn_char.py --workdir=runs/qrnn_enwik8
(the data as configs/awd_lstm_char.py: enwik8 cut into train.txt, valid.txt and test.txt.)
"""

import os

from lmscale.config import config_from_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = config_from_file(os.path.join(HERE, "awd_lstm_char.py"))
    config.unlock()
    config.model.kind = "qrnn"  # --model QRNN
    config.model.two_biases = False  # the LSTM configs' b_ih + b_hh: a QRNN has one bias
    config.model.layers = 4  # --nlayers 4
    config.model.embed = 400  # --emsize 400
    config.model.hidden = 2500  # --nhid 2500
    config.model.qrnn_window = 2  # first layer; the others 1 (model.py)
    config.model.qrnn_zoneout = 0.0  # zoneout=0 (model.py)
    config.model.input_dropout = 0.1  # --dropouti 0.1
    config.model.hidden_dropout = 0.1  # --dropouth 0.1
    config.model.output_dropout = 0.1  # --dropout 0.1
    config.model.weight_dropout = 0.0  # --wdrop 0
    config.lock()
    return config
