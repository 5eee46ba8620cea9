"""A new LM run that starts from another run's weights (``train.start_from``).

awd-lstm-lm's finetune.py: the model main.py saved (its best validation weights, averaged
under NT-ASGD) is loaded and trained on with a fresh ``ASGD(t0=0, lambd=0)``, averaging from
the first step (``optim.name="asgd"``). Here ``train.start_from=RUN/best`` (or ``RUN``: its
latest checkpoint, averaged where NT-ASGD averaged) gives the parameters; the optimizer
state, step, carried state and data position start afresh. Only parameters travel: the
architecture and the tokenizer must be the run's own. Read once, when the run has no
checkpoint; a resumed run goes on from its own.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from lmscale.config import ConfigError, load_config
from lmscale.models import architecture


def check_start_from(config: Any) -> None:
    """Before any data is prepared: ``train.start_from`` is a run whose architecture is this
    config's (a missing path or another model was said after the data was prepared, with a
    message that did not name the setting)."""
    from lmscale.training.run_paths import best_folder
    given = config.train.start_from
    run, best = best_folder(given)
    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):  # weights still to import: the convert command to run first
        from lmscale.pretrained.errors import unconverted_hint
        hint = unconverted_hint(run, then="--config.train.start_from=WORKDIR")
        if hint:
            raise ConfigError(f"train.start_from={given!r}: {hint}")
    if not os.path.isfile(path) or (best and not os.path.isfile(os.path.join(run, "best.json"))):
        what = "weights kept as validated best (checkpoint.keep_best)" if best else "config.json"
        raise ConfigError(f"train.start_from={given!r} is no lmscale LM run: no {what} there "
                          f"(RUN/best for a run's best weights, RUN for its latest)")
    source, derived = load_config(path)
    if "class_names" in derived:  # was said after the data was prepared, as load_classifier's
        raise ConfigError(f"train.start_from={given!r} is a fine-tuned classifier "
                          f"(lmscale.finetune), not a language model: start from the LM it "
                          f"was fine-tuned from ({source.get('init_from') or 'its init_from'})")
    theirs, ours = architecture(source.model), architecture(config.model)
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if differ:
        raise ConfigError(f"train.start_from={given!r} is another model: "
                          + ", ".join(f"model.{k} {theirs.get(k)!r} there, {ours.get(k)!r} here"
                                      for k in differ))


def start_params(config: Any, tokenizer: dict[str, Any], like: Any, sharding: Any
                 ) -> tuple[Any, dict[str, Any]]:
    """(parameters placed like ``like`` with ``sharding``, a provenance record) of
    ``config.train.start_from`` (``check_start_from`` passed: the architecture is ours);
    ConfigError if that run's tokenizer differs. The record's ``carried``: the source's
    provenance (an imported OpenAI model's ``preprocess`` framing), which comes with its
    weights into the new run's derived values."""
    from lmscale.training.restore import load_trained
    lm = load_trained(config.train.start_from)
    if lm.tokenizer.to_dict() != tokenizer:
        raise ConfigError(f"train.start_from={config.train.start_from!r} reads another "
                          f"tokenization ({lm.tokenizer.to_dict()} there, {tokenizer} here): "
                          f"train on the data it was prepared with")
    params = jax.tree.map(lambda x, s: jax.device_put(x, s.sharding if hasattr(s, "sharding") else sharding),
                          lm.params, like)
    from lmscale.training.resume import PROVENANCE_KEYS
    carried = {k: lm.derived[k] for k in PROVENANCE_KEYS if k in lm.derived}
    return params, {"workdir": lm.workdir, "step": lm.step, "best": lm.best, "carried": carried}
