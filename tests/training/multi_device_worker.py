"""Run by test_data_parallel.py in a subprocess with 8 fake CPU devices (XLA_FLAGS).

    python -m tests.training.multi_device_worker CORPUS OUT_DIR

Trains the same tiny runs on different device subsets of one process and prints, as one
JSON object, the per-step train losses of each, for the test to compare.
"""

from __future__ import annotations

import json
import shutil
import sys

import jax

from lmscale.models.recurrent import scan_options
from lmscale.training.loop import train
from lmscale.training.metrics import read_metrics
from tests.conftest import TINY_TRANSFORMER, tiny_config


def losses(workdir: str, split: str = "train") -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == split}


def main(corpus: str, out: str) -> None:
    devices = jax.devices()
    assert len(devices) == 8, f"expected 8 fake devices, got {len(devices)}"
    # Stateful (carry persisted), 2 layers with dropout: exercises row-wise dropout keys.
    base = {"train.steps": 20, "train.batch_size": 8, "train.log_every": 1, "train.eval_every": 10,
            "train.eval_batch_size": 8, "optim.decay_steps": 20, "model.layers": 2,
            "model.dropout": 0.2, "checkpoint.every": 10}
    result: dict[str, dict] = {}
    for n in (1, 8):
        workdir = f"{out}/d{n}"
        train(tiny_config(corpus, **base), workdir, devices=devices[:n])
        result[f"d{n}"] = losses(workdir)
    # The GPUs' batch-major recurrence loops under shard_map on 8 devices: d1's losses.
    with scan_options(layout="batch"):
        train(tiny_config(corpus, **base), f"{out}/d8_batch", devices=devices)
    result["d8_batch"] = losses(f"{out}/d8_batch")
    # A checkpoint written on 8 devices (step 10 of d8) continues on 1 and on 4 devices: one
    # 10-step run, copied into each workdir.
    train(tiny_config(corpus, **{**base, "train.steps": 10}), f"{out}/from8", devices=devices)
    for n in (1, 4):
        workdir = f"{out}/from8_on{n}"
        shutil.copytree(f"{out}/from8", workdir)
        train(tiny_config(corpus, **base), workdir, devices=devices[:n])
        result[f"from8_on{n}"] = losses(workdir)
    # The transformer (no carry; dropout everywhere; document segments), and validation with
    # 6 rows (padded to 8 on 8 devices): the same numbers on 1 and 8 devices.
    transformer = {**base, **TINY_TRANSFORMER, "model.dropout": 0.1, "model.attn_dropout": 0.1,
                   "model.ff_dropout": 0.1, "data.reset_on_documents": True,
                   "train.eval_batch_size": 6, "train.eval_every": 5}
    for n in (1, 8):
        workdir = f"{out}/t{n}"
        train(tiny_config(corpus, **transformer), workdir, devices=devices[:n])
        result[f"t{n}"] = losses(workdir)
        result[f"t{n}_val"] = losses(workdir, "val")
    # Fine-tuning on the d1 LM: multi-label head with dropout, aux LM loss, 2 frozen steps.
    result.update(finetune_losses(f"{out}/d1", out, devices))
    result.update(features(f"{out}/d1", devices))
    result.update(features(f"{out}/t1", devices, "tfeat"))
    # Global batch from a per-device batch.
    per_device = {**base, "train.steps": 2, "train.per_device_batch_size": 2, "train.batch_size": 1}
    train(tiny_config(corpus, **per_device), f"{out}/per_device", devices=devices[:4])
    result["per_device_batch"] = json.load(open(f"{out}/per_device/config.json"))["train"]["batch_size"]
    result["all_reduces"], result["params"] = step_all_reduces(devices)
    print("RESULT " + json.dumps(result))


def finetune_losses(lm_workdir: str, out: str, devices: list) -> dict[str, dict]:
    """Per-step train losses and val metrics of the same fine-tune on 1 and on 8 devices."""
    from pathlib import Path
    from lmscale.finetuning.loop import finetune
    from lmscale.training.metrics import read_metrics
    from tests.conftest import SHARED_DATA
    from tests.finetune.conftest import _head
    from tests.finetune.conftest import EMOTIONS, ft_config
    sem = SHARED_DATA / "semeval2018_ec"
    if not sem.is_dir():  # a clone without the maintainers' data: the test says it is skipped
        return {}
    train_csv = _head(sem / "train.csv", Path(out) / "sem_train.csv", 64)
    val_csv = _head(sem / "val.csv", Path(out) / "sem_val.csv", 13)  # 13 rows: padded on 8 devices
    result = {}
    for n in (1, 8):
        config = ft_config(lm_workdir, train_csv, val_csv, **{
            "train.steps": 6, "train.log_every": 1, "train.eval_every": 3, "checkpoint.every": 6,
            "finetune.multilabel": True, "finetune.text_column": "Tweet",
            "finetune.label_column": EMOTIONS, "finetune.head_dropout": 0.2,
            "finetune.head_hidden": "8", "finetune.aux_lm_weight": 0.1,
            "finetune.freeze_steps": 2, "finetune.best_metric": "loss"})
        finetune(config, f"{out}/ft{n}", devices=devices[:n])
        records = read_metrics(f"{out}/ft{n}")
        result[f"ft{n}"] = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
        result[f"ft{n}_val"] = {r["step"]: r["loss"] for r in records if r["split"] == "val"}
    return result


def features(lm_workdir: str, devices: list, name: str = "feat") -> dict[str, list]:
    """An LM's features of 21 texts of mixed lengths, packed into 8 rows (1 per device, or all
    on 1 device; the mLSTM's rows read 3 texts, some texts span chunks; the transformer's texts
    cut to its 32 tokens, several to a row where they fit), as lists."""
    from lmscale.training.mesh import make_mesh
    from lmscale.training.restore import load_trained
    from lmscale.transfer.featurize import featurize
    texts = [("the cat sat on a mat " * (1 + i % 4))[: 5 + 7 * i] for i in range(21)]
    out = {}
    for n in (1, 8):
        lm = load_trained(lm_workdir, mesh=make_mesh(devices[:n]))
        for pooling in ("last", "mean"):
            out[f"{name}{n}_{pooling}"] = featurize(lm, texts, pooling=pooling, batch_size=8,
                                                  chunk=16, all_layers=True).tolist()
    return out


def step_all_reduces(devices: list) -> tuple[list[dict], int]:
    """The all-reduces of the compiled train step over ``devices``, and the parameter count."""
    import numpy as np
    from flax import nnx
    from lmscale.config import default_config
    from lmscale.models import build_model
    from lmscale.training import mesh as mesh_lib
    from lmscale.training.hlo_stats import all_reduces
    from lmscale.training.optimizer import make_optimizer
    from lmscale.training.state import create_state, state_shardings
    from lmscale.training.steps import make_train_step
    cfg = default_config()
    cfg.model.hidden, cfg.model.embed = 32, 16
    model = build_model(cfg.model, 257, rngs=nnx.Rngs(0))
    tx, schedule = make_optimizer(cfg.optim, 100)
    graphdef, state = create_state(model, tx, 16, seed=0)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    mesh = mesh_lib.make_mesh(devices)
    rows = mesh_lib.batch_sharded(mesh)
    step = jax.jit(make_train_step(graphdef, tx, schedule, mesh, dropout=True),
                   in_shardings=(state_shardings(state, mesh), rows))
    batch = {k: jax.ShapeDtypeStruct((16, 8), dt) for k, dt in
             (("inputs", np.int32), ("targets", np.int32), ("weights", np.float32), ("resets", bool))}
    return all_reduces(step.lower(state, batch).compile().as_text()), params


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
