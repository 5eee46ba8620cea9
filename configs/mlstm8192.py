"""The paper's larger model: an 8192-d mLSTM (about 340 M parameters), fp16, many nodes.

Reasoning:
- Four times the recurrent parameters and FLOPs per character of the 4096-d model
  (W_mh 8192^2 and W_h 8192 x 32768 dominate); float32 master weights + Adam state are
  ~5.4 GB per GPU, so activations get the rest.
- 128 sequences per GPU (half of the 4096-d runs, to fit activations of 256 time steps
  in 80 GB: check with `python -m lmscale.plan --config=configs/mlstm8192.py --devices=8`).
- Learning rate: 5e-4 per 128 sequences scaled linearly, capped at 3e-3 as the seed;
  linear decay to 0 over min(100k steps, 3 epochs).

    sbatch --nodes=16 launch/slurm_mlstm.sbatch configs/mlstm8192.py runs/mlstm8192
"""

import os

from lmscale.config import config_from_file


def large_batch_run():
    return config_from_file(os.path.join(os.path.dirname(__file__), "mlstm4096_128gpu.py"))


def get_config():
    config = large_batch_run()
    config.unlock()
    config.model.hidden = 8192
    config.train.per_device_batch_size = 128
    config.lock()
    return config
