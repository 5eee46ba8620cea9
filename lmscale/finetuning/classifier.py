"""A saved classifier applied to new text: ``load_classifier(path).predict(texts)``.

``path`` is either a fine-tuned run (``lmscale.finetune``: the best checkpoint's parameters,
the tokenizer and preprocessing saved with it, and the multi-label thresholds tuned on
validation), or a ``lmscale.transfer`` output folder (or the LM workdir holding one in
``transfer/``): the LM's features, standardized, through the saved logistic regression
(classifier.json + classifier.npz, plain arrays, no pickle).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lmscale.config import load_config
from lmscale.data.texts import text_list
from lmscale.data.tokenizer import tokenizer_from_dict
from lmscale.finetuning.data import encode
from lmscale.finetuning.head import init_classifier
from lmscale.transfer.metrics import predict_labels
from lmscale.finetuning.predict import Predictor
from lmscale.pretrained.preprocess import get_preprocessor
from lmscale.training import mesh as mesh_lib
from lmscale.training.checkpoints import (CheckpointError, CheckpointMismatchError,
                                          UnreadableCheckpointError)
from lmscale.training.precision import Policy
from lmscale.training.restore import step_folders, open_reader
from lmscale.transfer.classify import TRANSFER_FILES


class LoadedClassifier:
    """``predict(texts) -> (probabilities float64 [N, K], labels [N] or 0/1 [N, K])``."""

    class_names: list[str]
    multilabel: bool
    thresholds: np.ndarray | None

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        probs = self.predict_proba(texts)
        return probs, predict_labels(probs, self.multilabel, self.thresholds)


class FinetunedClassifier(LoadedClassifier):
    """A ``lmscale.finetune`` run: its best checkpoint (the latest if none is marked), its
    matmuls in the dtype it was fine-tuned and validated in (``precision.compute``): the
    multi-label thresholds were tuned on those probabilities, and its reported test metrics
    are what ``predict`` reproduces."""

    def __init__(self, workdir: str, batch_size: int = 0) -> None:
        """``batch_size`` 0: the rows its validation read (``train.eval_batch_size``)."""
        config, derived = load_config(os.path.join(workdir, "config.json"))
        batch_size = batch_size or int(config.train.eval_batch_size)
        ckpt_dir = workdir
        best_path = os.path.join(workdir, "best.json")
        step = None
        best_dir = os.path.join(workdir, "best")
        # best/checkpoints/ itself is made at the fine-tune's start: a step in it is a best save
        if os.path.exists(best_path) or step_folders(os.path.join(best_dir, "checkpoints")):
            # best/ without best.json: a kill between the best save and best.json, or a
            # best.json deleted; the best checkpoint is still the classifier (the latest
            # training checkpoint was read instead, silently)
            ckpt_dir = best_dir
        for attempt in range(3):  # a fine-tune still running may replace its best meanwhile
            step = _best_json_step(best_path, ckpt_dir) if os.path.exists(best_path) else None
            checkpointer = open_reader(ckpt_dir)  # a fine-tune still running: listed again
            try:
                if step is not None and ckpt_dir == best_dir and step not in checkpointer.steps():
                    latest = checkpointer.latest_step()  # a kill between best save and best.json
                    if latest is not None:
                        print(f"note: {best_path} names step {step}, which {best_dir} no longer "
                              f"holds; reading its step {latest} (a resumed lmscale.finetune "
                              f"writes best.json again)", file=sys.stderr)
                        step = latest
                step = step if step is not None else checkpointer.latest_step()
                if step is None:
                    raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint yet")
                signature = checkpointer.read_meta(step)["signature"]
                self.tokenizer = tokenizer_from_dict(signature["data.tokenizer"], base_dir=workdir)
                self.class_names = list(derived["class_names"])
                self.multilabel = bool(config.finetune.multilabel)
                self.mesh = mesh_lib.make_mesh()
                graphdef, like, self.max_len = init_classifier(
                    config, signature["vocab_size"], len(self.class_names),
                    Policy.from_compute(config.precision.compute).compute, abstract=True)
                self.params = checkpointer.restore_params(like, mesh_lib.replicated(self.mesh),
                                                          step)
                break
            except UnreadableCheckpointError:
                # deleted while read (the fine-tune saved a better one): read the new best
                if attempt == 2 or os.path.isdir(checkpointer.path(step)):
                    raise
            finally:
                checkpointer.close()
        self.step, self.workdir = step, workdir
        self.preprocess = get_preprocessor(derived.get("preprocess", "none"))
        self.predictor = Predictor(graphdef, self.mesh, self.multilabel, tokenizer=self.tokenizer,
                                   config=config, derived=derived, batch_size=batch_size)
        self.thresholds = None
        thresholds_path = os.path.join(workdir, "thresholds.json")
        if self.multilabel and os.path.exists(thresholds_path):
            tuned = json.loads(Path(thresholds_path).read_text())
            if tuned.get("step", step) != step:  # a run resumed past them, or still running
                print(f"note: {thresholds_path} was tuned for step {tuned['step']}, and these "
                      f"weights are step {step}'s (a fine-tune that went on, or is still "
                      f"running): thresholds 0.5 until it ends and tunes them again",
                      file=sys.stderr, flush=True)
            else:
                self.thresholds = np.asarray(tuned["thresholds"])

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        ids = encode(self.tokenizer, self.preprocess, text_list(texts), self.max_len,
                     number_from=0)
        return self.predictor(self.params, ids)


def _best_json_step(best_path: str, ckpt_dir: str) -> int | None:
    """The step a fine-tune's best.json names; None, said, where it is torn or hand-edited."""
    try:
        return int(json.loads(Path(best_path).read_text())["step"])
    except (ValueError, KeyError, TypeError) as e:  # torn or hand-edited: the best
        print(f"note: {best_path} is unreadable ({type(e).__name__}: {e}); reading the "
              f"latest checkpoint in {ckpt_dir} (a resumed lmscale.finetune writes it "
              f"again)", file=sys.stderr)
        return None


def _load_transfer_lm(folder: str, info: dict[str, Any]) -> Any:
    """The LM a transfer classifier reads, as a TrainedLM in the dtype it was fit with: its
    workdir as seen from the classifier's folder (WORKDIR/transfer moves and is copied with
    its workdir), else the absolute path it was fit with — the first that holds the weights
    it was fit on (``info["lm_weights"]``); sets ``info["lm_workdir"]`` to it. Errors name
    where it looked."""
    from lmscale.training.checkpoints import CheckpointError
    from lmscale.training.restore import load_trained, weights_fingerprint
    from lmscale.training.run_paths import best_folder
    candidates = []
    if info.get("lm_workdir_from_here"):
        candidates.append(os.path.normpath(os.path.join(folder, info["lm_workdir_from_here"])))
    if os.path.abspath(info["lm_workdir"]) not in map(os.path.abspath, candidates):
        candidates.append(info["lm_workdir"])
    errors: list[Exception] = []
    for path in candidates:
        path, in_best = best_folder(path)  # fit on RUN/best (before it was read as RUN --best)
        if not os.path.isfile(os.path.join(path, "config.json")):
            continue
        try:
            best = bool(info.get("lm_best")) or in_best  # fit on the weights validated best
            lm = load_trained(path, None if best else info["lm_step"], best=best,
                              compute=info.get("compute", "float32"))
        except (FileNotFoundError, CheckpointError) as e:
            if not best and f"holds no checkpoint of step {info['lm_step']};" in str(e):
                e = FileNotFoundError(  # rotated away by a run still training there
                    f"{folder}: this classifier was fit on step {info['lm_step']} of {path}, "
                    f"which no longer holds it ({str(e).split('; ', 1)[-1]}; a run still "
                    f"training keeps its newest checkpoint.keep): re-run lmscale.transfer")
            errors.append(e)
            continue
        fit_on = info.get("lm_weights")  # absent in classifiers saved before it was kept
        if fit_on is not None and fit_on != weights_fingerprint(lm):
            errors.append(CheckpointMismatchError(
                f"{folder}: this classifier was fit on the features of other weights than "
                f"{path} now holds at step {info['lm_step']}{' (best)' if best else ''} (the LM "
                f"was retrained or its checkpoint replaced since); re-run lmscale.transfer"))
            continue
        info["lm_workdir"] = path
        return lm
    if errors:
        raise errors[0]
    raise FileNotFoundError(
        f"{folder}: the language model this classifier reads is not found: it was fit on "
        f"{info['lm_workdir']}" + (f" (from here {candidates[0]})" if len(candidates) > 1 else "")
        + "; put the LM's workdir back, or re-run lmscale.transfer on where it is now")


TRANSFER_INFO_KEYS = ("classes", "state", "pooling", "all_layers", "lm_workdir", "lm_step")
TRANSFER_ARRAYS = ("mean", "scale", "coef", "intercept")


def _read_transfer_files(folder: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """classifier.json and classifier.npz of a transfer output, checked: a damaged or
    hand-edited file is one CheckpointError naming it (was a traceback)."""
    import zipfile
    json_path, npz_path = (os.path.join(folder, f) for f in TRANSFER_FILES)
    again = "it is written by lmscale.transfer: restore it, or re-run lmscale.transfer"
    try:
        with open(json_path, encoding="utf-8") as f:
            info = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{json_path} is not valid JSON ({e}); {again}") from None
    if not isinstance(info, dict):  # was "lacks (not a JSON object)"
        raise CheckpointError(f"{json_path} is not a JSON object; {again}")
    missing = [k for k in TRANSFER_INFO_KEYS if k not in info]
    if missing:
        raise CheckpointError(f"{json_path} lacks {', '.join(missing)}; {again}")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, EOFError, zipfile.BadZipFile, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise CheckpointError(f"{npz_path} is damaged ({type(e).__name__}: {e}); {again}") from None
    missing = [k for k in TRANSFER_ARRAYS if k not in arrays]
    if missing:
        raise CheckpointError(f"{npz_path} lacks the arrays {', '.join(missing)}; {again}")
    return info, arrays


class TransferClassifier(LoadedClassifier):
    """A ``lmscale.transfer`` output: frozen-LM features -> standardize -> logistic regression."""

    def __init__(self, folder: str, batch_size: int = 64) -> None:
        self.info, self.arrays = _read_transfer_files(folder)
        # Features in the dtype the classifier was fit on (--compute of lmscale.transfer).
        self.lm = _load_transfer_lm(folder, self.info)
        # the labels' names where they were names ("negative", "positive"), else the ids
        self.class_names = [str(c) for c in self.info.get("class_names") or self.info["classes"]]
        self.multilabel = bool(self.info.get("multilabel", False))
        self.thresholds = (np.asarray(self.info["thresholds"], np.float64) if self.multilabel
                           else None)
        self.batch_size = batch_size

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        from lmscale.transfer.featurize import featurize
        i = self.info
        x = featurize(self.lm, texts, state=i["state"], pooling=i["pooling"],
                      all_layers=i["all_layers"], batch_size=self.batch_size)
        a = self.arrays
        if x.shape[1] != a["mean"].shape[0]:
            raise CheckpointMismatchError(
                f"this classifier takes {a['mean'].shape[0]} features, and {i['lm_workdir']} "
                f"gives {x.shape[1]} (the LM was retrained with another size since); re-run "
                "lmscale.transfer")
        z = ((x - a["mean"]) / a["scale"]) @ a["coef"].T + a["intercept"]  # [N, K] or [N, 1]
        p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
        if self.multilabel:
            return p  # one sigmoid per label
        return np.stack([1.0 - p[:, 0], p[:, 0]], axis=1)


def classifier_folder(path: str) -> tuple[str, str] | None:
    """Where ``path`` keeps a classifier: ("transfer", folder) for a transfer output (``path``
    or its ``transfer/``), ("finetuned", path) for a fine-tuned run, None for neither."""
    for folder in (path, os.path.join(path, "transfer")):
        if all(os.path.exists(os.path.join(folder, f)) for f in TRANSFER_FILES):
            return "transfer", folder
    config_path = os.path.join(path, "config.json")
    if os.path.exists(config_path) and load_config(config_path)[0].init_from:
        return "finetuned", path
    return None


def load_classifier(path: str, batch_size: int = 0) -> LoadedClassifier:
    """The classifier saved at ``path`` (a fine-tuned run, a transfer output, or an LM workdir
    with a transfer output in ``transfer/``); FileNotFoundError if it holds none.
    ``batch_size``: rows the texts are packed into; 0 = a fine-tuned run's validation rows
    (``train.eval_batch_size``), else 64. On as many devices as the run validated on (the
    ``classify`` tool splits a CPU host so), that gives its predictions again to the last digit."""
    found = classifier_folder(path)
    if found is None:
        for folder in (path, os.path.join(path, "transfer")):  # one of the two files gone
            present = [f for f in TRANSFER_FILES if os.path.exists(os.path.join(folder, f))]
            if present:
                gone = [f for f in TRANSFER_FILES if f not in present]
                raise FileNotFoundError(f"{folder} holds {present[0]} but not {gone[0]}: a "
                                        "transfer output needs both; restore it, or re-run "
                                        "lmscale.transfer")
        raise FileNotFoundError(f"{path} holds no classifier: neither a fine-tuned run "
                                "(lmscale.finetune) nor a transfer output with classifier.json "
                                "(re-run lmscale.transfer)")
    kind, folder = found
    if batch_size != 0:  # 0: the default; else a positive number of rows (-1 was taken)
        from lmscale.transfer.featurize import positive_int
        batch_size = positive_int("batch_size", batch_size)
    return (TransferClassifier(folder, batch_size or 64) if kind == "transfer"
            else FinetunedClassifier(folder, batch_size))
