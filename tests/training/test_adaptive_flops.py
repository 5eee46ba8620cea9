"""The FLOPs that plan, bench and train report for a model with an adaptive softmax: the
training loss forms the head's logits and each target's cluster's, not all V (which is what
they counted before: at WT103's cut-offs 2.3x a QRNN's true FLOPs)."""

from __future__ import annotations

import json

import numpy as np

from lmscale.models import flops_per_token
from lmscale.models.adaptive_softmax import tail_shares, zipf_id_counts
from lmscale.training.flops import train_flops_per_token
from tests.conftest import tiny_config

V, CUTS = 400, "20,100"


def _word_qrnn(train: str, **overrides):
    return tiny_config(train, **{"model.kind": "qrnn", "model.hidden": 16, "model.embed": 8,
                                 "model.adaptive_cutoffs": CUTS, "data.tokenizer": "word",
                                 **overrides})


def test_plan_counts_the_loss_at_zipf_shares_and_inference_at_every_logit():
    from lmscale.training.plan import format_plan, plan
    config = _word_qrnn("unused.txt")
    p = plan(config, vocab_size=V)
    shares = tail_shares((20, 100), zipf_id_counts(V))
    assert p["tail_shares"] == list(shares) and 0.3 < sum(shares) < 0.6
    assert p["flops_per_token_forward"] == flops_per_token(config.model, V)
    assert p["flops_per_token_train"] == 3 * flops_per_token(config.model, V, tail_shares=shares)
    assert p["flops_per_token_train"] < 0.7 * 3 * p["flops_per_token_forward"]
    assert p["flops_per_step_train"] == p["flops_per_token_train"] * 4 * 16
    assert "adaptive softmax: the loss forms the head's logits" in format_plan(p)
    without = plan(tiny_config("unused.txt"), vocab_size=V)
    assert without["tail_shares"] is None
    assert without["flops_per_token_train"] == 3 * without["flops_per_token_forward"]


def test_bench_draws_zipf_targets_and_counts_their_clusters():
    from lmscale.training import bench
    config = _word_qrnn("unused.txt")
    r = bench.time_step(config, steps=1, warmup=0, vocab_size=V)
    targets = bench.random_batch(4, 16, V, seed=config.seed, zipf=True)["targets"]
    assert (targets < 20).mean() > 0.4  # uniform targets: 5 %
    assert r["train_flops_per_token"] == train_flops_per_token(
        config.model, V, 16, id_counts=np.bincount(targets.reshape(-1), minlength=V))
    assert r["train_flops_per_token"] < 3 * flops_per_token(config.model, V)


def test_a_run_records_the_loss_flops_of_its_own_training_text(tmp_path):
    from lmscale.data.dataset import TokenDataset
    from lmscale.training.loop import train
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    p = np.arange(1, 301, dtype=float) ** -1.0
    lines = [" ".join(rng.choice(words, 12, p=p / p.sum())) for _ in range(400)]
    text = tmp_path / "words.txt"
    text.write_text("\n".join(lines) + "\n")
    config = _word_qrnn(str(text), **{"train.steps": 2, "train.eval_every": 0})
    train(config, str(tmp_path / "run"))
    derived = json.loads((tmp_path / "run" / "config.json").read_text())["derived"]
    split = TokenDataset.open(derived["dataset"]).split("train")
    vocab = TokenDataset.open(derived["dataset"]).tokenizer.vocab_size
    counts = np.bincount(np.concatenate([split.read(i, 0, int(n)) for i, n in
                                         enumerate(split.shard_lengths)]).astype(np.int64),
                         minlength=vocab)
    assert derived["train_flops_per_token"] == train_flops_per_token(
        config.model, vocab, 16, id_counts=counts)  # a small split is read whole
    assert derived["train_flops_per_token"] < 3 * flops_per_token(config.model, vocab)
    # lmscale.plan of the run's config.json: the vocabulary of the data it prepared (a word
    # config alone does not fix it: it was refused, asking to prepare that data).
    import subprocess
    import sys

    from tests.conftest import REPO
    proc = subprocess.run([sys.executable, "-m", "lmscale.plan",
                           f"--config={tmp_path / 'run' / 'config.json'}",
                           f"--json={tmp_path / 'plan.json'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "plan.json").read_text())["vocab_size"] == vocab
    capped = subprocess.run([*proc.args, "--config.data.word_vocab_size=150"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert capped.returncode == 0, capped.stderr[-2000:]  # the command line's data first
    assert json.loads((tmp_path / "plan.json").read_text())["vocab_size"] == 150


def test_counts_of_no_target_fall_back_to_zipf_and_a_wrong_length_is_refused():
    import pytest
    config = _word_qrnn("unused.txt")
    zipf = train_flops_per_token(config.model, V, 16)
    assert train_flops_per_token(config.model, V, 16, id_counts=np.zeros(V, np.int64)) == zipf
    with pytest.raises(ValueError, match="id_counts has 399 entries, the vocabulary 400"):
        train_flops_per_token(config.model, V, 16, id_counts=np.ones(V - 1))


def test_adaptive_backward_recompute_is_counted_as_executed_not_as_model_flops():
    """_cluster_bwd forms each target's tail-cluster logits again: one more forward of the
    tail matmuls, H x sum(share_i x size_i) multiply-adds a token (hand count)."""
    from lmscale.training.flops import adaptive_recompute_flops_per_token
    config = _word_qrnn("unused.txt")
    shares = tail_shares((20, 100), zipf_id_counts(V))
    top = int(config.model.embed if config.model.tie_embeddings else config.model.hidden)
    hand = 2 * top * (shares[0] * 80 + shares[1] * 300)
    assert abs(adaptive_recompute_flops_per_token(config.model, V, 16) - hand) <= 2
    assert adaptive_recompute_flops_per_token(tiny_config("unused.txt").model, V, 16) == 0
