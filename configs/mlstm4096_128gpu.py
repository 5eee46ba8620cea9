"""The paper's headline run: 4096-d mLSTM, 128 GPUs (16 nodes x 8), 32k global batch, fp16.

Reasoning (Puri et al. 2018, "Converging on 40GB of Text in Four Hours"):
- 256 sequences per GPU x 128 GPUs = 32768 sequences of 256 characters per step.
- Learning rate: 5e-4 per 128 sequences scaled linearly would be 0.128 at 32k, far past
  stability; the seed caps it at 3e-3.
- Decay: linear to 0 over 100k steps or 3 epochs, whichever comes first (the seed's rule
  for global batches above 2048); the run stops at the same point.
- No shuffling between epochs (data.shuffle_shards=False), as the paper.
- float16 with dynamic loss scaling; float32 master weights and Adam state.

    sbatch launch/slurm_mlstm.sbatch configs/mlstm4096_128gpu.py runs/mlstm4096_32k
"""

import os

from lmscale.config import config_from_file


def one_node_run():
    """configs/mlstm4096_8gpu.py: 256 sequences per GPU in fp16, 5e-4 @ 128 scaled linearly, capped at 3e-3."""
    return config_from_file(os.path.join(os.path.dirname(__file__), "mlstm4096_8gpu.py"))


def get_config():
    config = one_node_run()  # per GPU: the same batch, precision and learning-rate rule
    config.unlock()
    config.optim.schedule = "linear"
    config.optim.decay_steps = 100_000  # decay to 0 over min(100k steps, ...
    config.optim.decay_epochs = 3.0  # ... 3 epochs)
    config.train.steps = 100_000
    config.train.epochs = 3.0
    config.data.shuffle_shards = False
    config.train.log_every = 20
    config.train.eval_every = 1000
    config.checkpoint.every = 1000
    config.lock()
    return config
