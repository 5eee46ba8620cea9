"""Pretrained weights: import OpenAI's and sentiment-discovery's mLSTMs, export lmscale's.

Every conversion goes through ``LMWeights`` (weights.py), the parameters of an lmscale
RecurrentLM as NumPy arrays keyed by nnx.Param path:

- ``openai.load_openai(DIR)`` / ``openai.save_openai(weights, DIR)``: OpenAI's 15 .npy files;
- ``sentiment_discovery.load_pt(FILE)`` / ``save_pt(weights, FILE)``: sentiment-discovery's
  PyTorch state dicts (torch is an optional extra); ``from_state_dict`` / ``to_state_dict``
  do the mapping on plain nested dicts of arrays;
- ``workdir.write_workdir(weights, WORKDIR)`` / ``read_workdir(WORKDIR)``: an ordinary
  lmscale workdir that ``load_trained`` and every tool accept;
- ``preprocess``: the text preprocessing an imported model expects (OpenAI's framing).

The command line is ``python -m lmscale.convert``.
"""

from lmscale.pretrained.errors import ConvertError
from lmscale.pretrained.preprocess import get_preprocessor, openai_preprocess, preprocessor_for
from lmscale.pretrained.weights import LMWeights, weights_from_model

__all__ = ["ConvertError", "LMWeights", "weights_from_model", "get_preprocessor",
           "openai_preprocess", "preprocessor_for"]
