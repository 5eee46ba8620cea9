"""Fine-tune an LM on SemEval-2018 Task 1 E-c: tweets tagged with any of 11 emotions
(multi-label: one sigmoid per emotion; thresholds tuned per emotion on val to maximize F1).

    python -m lmscale.finetune --config=configs/finetune_semeval.py --workdir=runs/semeval_ft \
        --config.init_from=runs/sst_lm

(runs/sst_lm: configs/sst_lm.py; any lmscale LM works, an in-domain one better.)

The data set ships train and val only: val picks the best checkpoint and the thresholds,
so its scores are optimistic (as in the task papers' validation numbers).
"""

from lmscale.config import default_config
from lmscale.datasets import data_path

# SemEval-2018 Task 1 E-c (English) is distributed by the task organizers after registration
# (competitions.codalab.org, "SemEval-2018 Task 1: Affect in Tweets"); place its train and dev
# files as train.csv and val.csv (columns ID,Tweet,anger,...,trust) in this folder, or
# override finetune.train / finetune.val.
SEMEVAL = data_path("semeval2018_ec")
EMOTIONS = ("anger,anticipation,disgust,fear,joy,love,optimism,pessimism,sadness,surprise,trust")


def get_config():
    config = default_config()
    config.init_from = ""  # --config.init_from=LM_WORKDIR
    ft = config.finetune
    ft.train, ft.val = f"{SEMEVAL}/train.csv", f"{SEMEVAL}/val.csv"
    ft.text_column, ft.label_column = "Tweet", EMOTIONS
    ft.multilabel = True
    ft.state = ""
    ft.pooling = "last,mean,max"
    ft.head_hidden = "256"
    ft.head_dropout = 0.1
    ft.freeze_steps = 100
    ft.head_lr = 3e-3
    ft.best_metric = "jaccard"
    config.train.steps = 600  # ~5.6 epochs of 6,838 tweets at batch 64
    config.train.batch_size = 64
    config.train.log_every = 25
    config.train.eval_every = 100
    config.train.eval_batch_size = 128
    config.optim.lr = 1e-3
    config.optim.schedule = "slanted_triangular"
    config.optim.stlr_cut_frac = 0.1
    config.optim.stlr_ratio = 32.0
    config.checkpoint.every = 200
    config.checkpoint.keep = 2
    config.lock()
    return config
