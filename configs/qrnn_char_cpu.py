"""A CPU-sized AWD-QRNN character model on Tiny Shakespeare: configs/qrnn_char.py's recipe
(window 2 on the first layer, locked dropout, Adam) scaled down like
configs/awd_lstm_char_cpu.py (2 layers of 512, batch 32 x 128, linear decay, fixed BPTT
length, untied embeddings).

    python -m lmscale.train --config=configs/qrnn_char_cpu.py --workdir=runs/qrnn_char_cpu
"""

import os

from lmscale.config import config_from_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    config = config_from_file(os.path.join(HERE, "awd_lstm_char_cpu.py"))
    config.unlock()
    config.model.kind = "qrnn"
    config.model.two_biases = False  # the LSTM configs' b_ih + b_hh: a QRNN has one bias
    config.model.layers = 2
    config.model.embed = 128
    config.model.hidden = 512
    config.model.qrnn_window = 2
    config.model.input_dropout = 0.05
    config.model.hidden_dropout = 0.05
    config.model.output_dropout = 0.05
    config.model.weight_dropout = 0.0  # as qrnn_char (--wdrop 0)
    config.lock()
    return config
