"""ULMFiT's fine-tuning settings on SST binary: discriminative rates and gradual unfreezing.

    python benchmarks/ulmfit_settings.py --init_from=runs/sst_lm2 \
        --data=$(python -m lmscale.datasets fetch sst_binary | head -1)
    python benchmarks/ulmfit_settings.py --init_from=runs/sst_lm2 --data=DIR \
        --seeds 0,1 --steps 400 --settings baseline,both

Fine-tunes one trained LM (``--init_from``) with ``configs/finetune_sst.py`` under these
settings, each with every ``--seeds`` value (``--config.seed``):

- ``baseline``: the config as it is (LM frozen for ``freeze_steps``, then all of it at once);
- ``layer_lr_decay``: ``finetune.layer_lr_decay=2.6`` (discriminative fine-tuning);
- ``unfreeze_every``: ``finetune.unfreeze_every=100`` (gradual unfreezing after
  ``freeze_steps``: the top layer first, one group below every 100 steps);
- ``both``: the two together;
- ``lm_dropout``: ``finetune.lm_dropout=0.5`` (the LM's own dropouts at half their rates,
  ULMFiT's classifier drop_mult; for an LM trained with dropout, e.g. an AWD-LSTM).

Each run is ``python -m lmscale.finetune`` in a fresh process, in ``--workdirs/SETTING_sSEED``
(its output in ``SETTING_sSEED.log`` beside it); its ``results.json`` gives one JSON line
appended to ``--out``: setting, seed, steps, val/test accuracy, val/test macro F1, best step,
the wall seconds of the process and the repo's commit at its end. A run already in ``--out`` is
skipped (the same setting, seed, steps, LM and ``--extra`` flags), so re-running the same command
resumes the grid (an interrupted fine-tune resumes from its checkpoint: its wall seconds are then
the second process's only, and ``resumed`` says so). Runs with other ``--extra`` flags need
another ``--workdirs`` (the run folders are named by setting and seed only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from lmscale.training.bench import append_jsonl, git_commit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {
    "baseline": [],
    "layer_lr_decay": ["--config.finetune.layer_lr_decay=2.6"],
    "unfreeze_every": ["--config.finetune.unfreeze_every=100"],
    "both": ["--config.finetune.layer_lr_decay=2.6", "--config.finetune.unfreeze_every=100"],
    "lm_dropout": ["--config.finetune.lm_dropout=0.5"],  # an LM trained with dropout only
}


def _done(path: str) -> set[tuple[str, int, int, str, tuple[str, ...]]]:
    """(setting, seed, steps, init_from, extra flags) of the runs already recorded in ``path``."""
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    done.add((r["setting"], r["seed"], r["steps"], r["init_from"],
                              tuple(r.get("extra", []))))
    return done


def one_run(args: argparse.Namespace, setting: str, seed: int) -> dict:
    name = f"{setting}_s{seed}"
    workdir = os.path.join(args.workdirs, name)
    resumed = os.path.exists(os.path.join(workdir, "config.json"))
    cmd = [sys.executable, "-m", "lmscale.finetune", f"--config={args.config}",
           f"--workdir={workdir}", f"--config.init_from={args.init_from}",
           f"--config.finetune.train={args.data}/train.csv",
           f"--config.finetune.val={args.data}/val.csv",
           f"--config.finetune.test={args.data}/test.csv",
           f"--config.seed={seed}", f"--config.train.steps={args.steps}",
           *SETTINGS[setting], *args.extra]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    os.makedirs(args.workdirs, exist_ok=True)
    start = time.perf_counter()
    with open(os.path.join(args.workdirs, f"{name}.log"), "a") as log:
        rc = subprocess.run(cmd, cwd=args.repo, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"[{name}] exited {rc} after {wall:.0f} s: see {log.name}")
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    m = results["metrics"]
    commit = git_commit(args.repo)
    return {"bench": "ulmfit_settings", "setting": setting, "seed": seed, "steps": args.steps,
            "init_from": os.path.abspath(args.init_from), "workdir": os.path.abspath(workdir),
            "val_accuracy": m["val"]["accuracy"], "test_accuracy": m["test"]["accuracy"],
            "val_macro_f1": m["val"]["macro_f1"], "test_macro_f1": m["test"]["macro_f1"],
            "best_step": results["best"].get("step"), "wall_s": round(wall, 1),
            "resumed": resumed, "extra": args.extra, "commit": commit,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init_from", required=True, help="the trained LM's workdir")
    p.add_argument("--data", required=True, help="folder with train.csv, val.csv, test.csv")
    p.add_argument("--config", default="configs/finetune_sst.py", help="relative to --repo")
    p.add_argument("--repo", default=REPO, help="where the runs start (configs/ resolves there)")
    p.add_argument("--settings", default=",".join(s for s in SETTINGS if s != "lm_dropout"),
                   help="comma list of " + ", ".join(SETTINGS) + " (lm_dropout: not by default)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--workdirs", default="runs/ulmfit_settings")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "ulmfit_settings.jsonl"))
    p.add_argument("--extra", action="append", default=[],
                   help="one more flag for every run, e.g. "
                        "--extra=--config.finetune.bucket_width=128")
    args = p.parse_args()
    args.init_from, args.data = os.path.abspath(args.init_from), os.path.abspath(args.data)
    args.workdirs = os.path.abspath(args.workdirs)
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; known: {list(SETTINGS)}")
    done = _done(args.out)
    # seed-major order: a grid stopped early still has every setting at the first seeds
    for seed in (int(s) for s in args.seeds.split(",")):
        for setting in settings:
            if (setting, seed, args.steps, args.init_from, tuple(args.extra)) in done:
                print(f"[{setting}_s{seed}] already in {args.out}: skipped", flush=True)
                continue
            record = one_run(args, setting, seed)
            append_jsonl(record, args.out)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
