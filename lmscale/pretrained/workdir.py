"""LMWeights <-> an ordinary lmscale workdir (config.json + an orbax checkpoint).

A converted workdir is a run at step 0: its checkpoint holds the full TrainState that
``lmscale.training.restore.load_trained`` restores (the imported parameters, a fresh Adam
state, a zero RNN carry of ``train.batch_size`` rows), with the same model signature as
training writes. So every tool loads it, and ``lmscale.train`` with a config of the same
model (model.*, data.tokenizer, train.batch_size) fine-tunes from it.

config.json's ``derived`` records the provenance: ``derived["pretrained"]`` (format, source
path, the original's feature and sentiment unit where known) and ``derived["preprocess"]``,
the text preprocessing the original model expects ("openai" or "none"; see preprocess.py).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from lmscale.config import default_config, save_config
from lmscale.models import count_params
from lmscale.pretrained.errors import ConvertError
from lmscale.pretrained.weights import LMWeights, params_to_numpy, tokenizer_name


def workdir_config(weights: LMWeights, batch_size: int | None = None) -> ml_collections.ConfigDict:
    """The run config of a converted model: defaults, with its model section and tokenizer."""
    config = default_config()
    for key, value in weights.model_config().items():
        config.model[key] = value
    config.data.tokenizer = tokenizer_name(weights.tokenizer)
    config.data.train = ""  # no training data: the weights came from elsewhere
    if batch_size is not None:
        config.train.batch_size = int(batch_size)
    config.lock()
    return config


def write_workdir(weights: LMWeights, workdir: str, *, batch_size: int | None = None) -> str:
    """Writes ``workdir/config.json`` and a step-0 checkpoint of ``weights``; returns the path.

    ``workdir`` must not exist or be empty. ``batch_size`` sets ``train.batch_size`` (the rows
    of the saved RNN carry, part of the model signature); default: the config default.
    """
    from lmscale.training.checkpoints import Checkpointer
    from lmscale.training.model_signature import model_signature
    from lmscale.training.flops import train_flops_per_token
    from lmscale.training.optimizer import make_optimizer
    from lmscale.training.state import create_state

    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise ConvertError(f"{workdir} already exists and is not empty; expected a new workdir")
    weights.check("weights")
    config = workdir_config(weights, batch_size)
    model = weights.to_model()
    vocab = weights.vocab_size
    tx, _ = make_optimizer(config.optim, config.train.steps)
    _, state = create_state(model, tx, config.train.batch_size, config.seed)
    os.makedirs(workdir, exist_ok=True)
    checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep, async_save=False)
    checkpointer.save(state, {
        "signature": model_signature(config, weights.tokenizer.to_dict(), vocab)})
    checkpointer.close()
    derived: dict[str, Any] = {
        "steps": 0,
        "params": count_params(model),
        "train_flops_per_token": train_flops_per_token(config.model, vocab, 1),
        "preprocess": weights.preprocess,
        "pretrained": dict(weights.source),
    }
    save_config(config, derived, os.path.join(workdir, "config.json"))
    return os.path.abspath(workdir)


def read_workdir(workdir: str, step: int | None = None) -> LMWeights:
    """The LMWeights of a workdir's latest (or given) checkpoint, via ``load_trained``."""
    from lmscale.training.restore import load_trained

    lm = load_trained(workdir, step)
    m = lm.config.model
    if m.kind not in ("mlstm", "lstm") or m.tie_embeddings or \
            lm.tokenizer.to_dict().get("kind") != "byte":
        what = f"a {m.kind}" + (" with tied embeddings" if m.tie_embeddings else "") + \
            f" on {lm.tokenizer.to_dict().get('kind')} tokens"
        raise ConvertError(f"{workdir} holds {what}: convert reads and writes byte-level mLSTM "
                           f"and LSTM models with their own decoder (the layouts of OpenAI's and "
                           f"sentiment-discovery's recurrent models)")
    return LMWeights(kind=lm.config.model.kind, tokenizer=lm.tokenizer,
                     params=params_to_numpy(lm.params),
                     preprocess=str(lm.derived.get("preprocess", "none")),
                     source={"format": "lmscale", "path": os.path.abspath(workdir), "step": lm.step})
