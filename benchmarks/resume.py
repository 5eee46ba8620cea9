"""What a user waits for, and the memory it takes, when a run resumes: whole `lmscale.train`
processes continuing a run by one step, optionally against another checkout of lmscale.

    python benchmarks/resume.py --config=configs/mlstm4096.py --rounds 3 \
        [--before /tmp/old_checkout] [--set train.batch_size=2 --set ...]

One run of ``--config`` (with each ``--set`` as a ``--config.`` override) is trained for ``--steps`` steps into a temporary workdir (its data
prepared there once). Each round then copies that workdir afresh for each side and times a
process of ``python -m lmscale.train`` that resumes it and trains one more step (restore,
compile or cache read, the step, the final evaluation and checkpoint). The sides take turns
in each round (this VM's speed drifts over minutes): this checkout, and with ``--before`` the
checkout at that path (run with it as the working directory, so its ``lmscale`` is the one
imported). Per process: wall seconds and peak resident memory (the child's ``ru_maxrss``).
Prints each round and the medians; appends one JSON line per side to benchmarks/results.jsonl.
The compilation cache is the user's default, so after the first round the step is read back;
``LMSCALE_COMPILE_CACHE=off`` in the environment times cold compiles (recorded in the line).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags

from lmscale.training.bench import append_jsonl, git_commit, host_info, train_process

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
_CONFIG = flags.DEFINE_string("config", None, "Run config file.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds; each resumes once per side.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 1, "Steps of the run that is resumed.", lower_bound=1)
_BEFORE = flags.DEFINE_string("before", "", "Another lmscale checkout to compare with.")
_SET = flags.DEFINE_multi_string("set", [], "A config override, e.g. train.batch_size=2.")
_OUT = flags.DEFINE_string("out", os.path.join(HERE, "results.jsonl"), "JSON lines appended here.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    del argv
    overrides = [f"--config.{o}" for o in _SET.value]
    common = [f"--config={os.path.abspath(_CONFIG.value)}", "--config.train.eval_every=0",
              "--config.train.eval_steps=1", "--config.train.progress_bar=False", *overrides]
    sides = {"this": REPO, **({"before": os.path.abspath(_BEFORE.value)} if _BEFORE.value else {})}
    walls: dict[str, list[float]] = {s: [] for s in sides}
    peaks: dict[str, list[int]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as folder:
        base = os.path.join(folder, "base")
        train_process([*common, f"--workdir={base}", f"--config.train.steps={_STEPS.value}"], REPO)
        for r in range(_ROUNDS.value):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                workdir = os.path.join(folder, side)
                shutil.rmtree(workdir, ignore_errors=True)
                shutil.copytree(base, workdir)
                wall, usage = train_process([*common, f"--workdir={workdir}",
                                             f"--config.train.steps={_STEPS.value + 1}"], sides[side])
                peak = usage.ru_maxrss * 1024  # Linux reports KiB
                walls[side].append(wall)
                peaks[side].append(peak)
                print(f"round {r + 1} {side}: {wall:.2f} s, peak RSS {peak / 2**30:.2f} GiB", flush=True)
    info = {k: v for k, v in host_info().items() if k != "devices"}  # this process's, not the runs'
    for side, path in sides.items():
        record = {"benchmark": "resume", "config": _CONFIG.value, "overrides": overrides,
                  "side": side, "commit": git_commit(path), "wall_s": walls[side],
                  "median_wall_s": statistics.median(walls[side]),
                  "peak_rss_bytes": peaks[side], "date": time.strftime("%Y-%m-%d %H:%M"),
                  "LMSCALE_COMPILE_CACHE": os.environ.get("LMSCALE_COMPILE_CACHE"),
                  **info}
        append_jsonl(record, _OUT.value)
        print(f"{side} ({record['commit']}): median {record['median_wall_s']:.2f} s, "
              f"peak RSS {max(peaks[side]) / 2**30:.2f} GiB max")


if __name__ == "__main__":
    app.run(main)
