"""The run configuration: every field with its meaning, validation, and derived values.

Configs are data. ``default_config()`` defines every field once, with a comment; ``configs/``
files change what they need and return it locked (a typo in ``--config.x.y=...`` fails).

Values that follow from others (steps per epoch, the decay horizon, tokens per step)
are computed in one place, ``derive()``, once the training data is known, and saved
with the run in ``WORKDIR/config.json`` under ``"derived"``.

Importing this module (as every config file does, while the command line is parsed) does not
import JAX: a tool may still restart its process with other settings then (host_memory.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from typing import Any, Protocol

import ml_collections

from lmscale import config_checks as checks
from lmscale.config_checks import check_numbers, validate_optim
from lmscale.config_values import (BUILT_IN_KINDS, COMPUTE_DTYPES, DEFAULT_REMAT_STEPS,
                                   MAX_LOSS_SCALE, ConfigError, parse_epochs, step_width)


def default_config() -> ml_collections.ConfigDict:
    """Every field of a run, with its default. Returned unlocked; configs lock it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds parameter init, dropout, shard shuffling (optional), variable-BPTT lengths; fine-tuning: head init and batch order
    c.resume = True  # continue from the workdir's latest checkpoint; False: archive the previous run (WORKDIR/archive/) and start afresh

    c.data = ml_collections.ConfigDict()
    # Training text: a prepared dataset folder (`lmscale.prepare`), raw text paths/globs (comma separated; prepared on the fly into WORKDIR/data), or a built-in corpus ("python_stdlib").
    c.data.train = "python_stdlib"
    # Validation / test text given on its own (paths/globs, e.g. PTB's or WikiText's files): then data.train is all training text and data.split is not used. "" = cut from data.train.
    c.data.val = ""
    c.data.test = ""
    c.data.text_column = ""  # CSV column holding the text when data.train is raw CSV ("" = "text")
    c.data.text_field = ""  # JSONL field holding the text when data.train is raw JSONL ("" = "text")
    c.data.txt_mode = "file"  # raw .txt: "file" = one document per file, "line" = per line
    c.data.split = "98,1,1"  # shards per cycle for train,val,test when preparing (paper: 1000,1,1)
    c.data.shard_tokens = 2**27  # upper bound on tokens per shard when preparing
    c.data.tokenizer = "sentiment_discovery"  # bytes: "sentiment_discovery" (byte+1, pad 0), "openai" (byte); "sentencepiece"; or "word"
    c.data.vocab_size = 8000  # sentencepiece: pieces to train (ids: one more, 0 = padding)
    c.data.sp_model_type = "bpe"  # sentencepiece: "bpe" or "unigram"
    c.data.sp_model = ""  # sentencepiece: "" = train one on the training text, else an existing .model file
    c.data.sp_sample_bytes = 100_000_000  # sentencepiece: text (spread over the inputs) to train it on
    c.data.word_min_count = 1  # word: a word seen fewer times in the training split is <unk>
    c.data.word_vocab_size = 0  # word: most ids (<pad>, <unk>, <eos> included; most frequent words kept); 0 = no cap
    c.data.reset_on_documents = False  # also zero the RNN state at document starts (shards always reset)
    c.data.reset_every_documents = 0  # zero it at every N-th document of a shard (sentiment-discovery: shards of 100 reviews); 0 = off
    c.data.shuffle_shards = False  # seeded shuffle of shard order per epoch
    c.data.shuffle_documents = False  # preparing: the documents in a random order (one for all runs), as sentiment-discovery's

    c.model = ml_collections.ConfigDict()
    c.model.kind = "mlstm"  # "mlstm" (multiplicative LSTM), "lstm", "qrnn" or "transformer"
    c.model.layers = 1  # stacked recurrent layers / transformer blocks
    # Dropout (training only): recurrent models between stacked layers; the transformer on each block's residual branches and embeddings.
    c.model.dropout = 0.0
    # Weight norm g*v/|v|: recurrent models on every matrix of their layers (W_x too); the
    # transformer on every block matrix and the output head (never on embeddings).
    c.model.weight_norm = True
    # Recurrent models (mlstm, lstm)
    c.model.embed = 64  # embedding width
    c.model.hidden = 4096  # recurrent state width per layer
    # mlstm/lstm: the gate bias as PyTorch's and sentiment-discovery's two trained vectors b_ih + b_hh, each
    # U(+-1/sqrt(hidden)) (Adam moves their sum twice as fast; the clip norm counts it twice); False: one, zero at start
    c.model.two_biases = False
    # mlstm/lstm/qrnn: embedding and untied decoder init: "uniform" U(+-0.1) both (awd-lstm-lm), or "pytorch":
    # N(0, 1) and U(+-1/sqrt(hidden)), nn.Embedding's and nn.Linear's (sentiment-discovery's RNNModel); decoder bias 0
    c.model.io_init = "uniform"
    # Transformer (decoder-only, fairseq-style as sentiment-discovery's)
    c.model.d_model = 768  # residual stream width
    c.model.heads = 8  # attention heads (d_model must be divisible by it)
    c.model.d_ff = 3072  # feed-forward hidden width
    c.model.max_len = 256  # longest sequence (positions); train.seq_len must not exceed it
    c.model.norm = "post"  # "post": x = LN(x + f(x)) as the seed/fairseq; "pre": x + f(LN(x)) and a final LN
    c.model.positions = "learned"  # "learned" embeddings or fixed "sinusoidal"
    c.model.attn_dropout = 0.0  # dropout on attention probabilities (training only)
    c.model.ff_dropout = 0.0  # dropout after the feed-forward activation (training only)
    c.model.tie_embeddings = False  # output head = token embedding transposed (the seed: untied); recurrent kinds: the last layer is model.embed wide
    c.model.init = "fairseq"  # "fairseq" (the seed's: Xavier-uniform projections, N(0, 1/d) embeddings and head) or "gpt2" (nanoGPT's, after the GPT-2 paper: N(0, 0.02^2), out and fc2 scaled by 1/sqrt(2 layers), embeddings unscaled)
    # Recompute activations in the backward pass (less memory, more compute). Transformer:
    # "none" or "block" (each block's). mlstm/lstm: "none" or "segments": the forward keeps
    # only the state every model.remat_steps steps, the backward recomputes each segment's
    # residuals (memory of remat_steps steps instead of train.seq_len, one more forward).
    c.model.remat = "none"
    c.model.remat_steps = DEFAULT_REMAT_STEPS  # steps per recomputed segment; must divide train.seq_len (or exceed it: one segment)
    c.model.scan_layers = True  # one compiled block scanned over stacked layer params (False: a Python loop, for debugging)
    # ---- AWD-LSTM / QRNN (recurrent kinds mlstm, lstm, qrnn; salesforce/awd-lstm-lm names in
    # brackets). Dropouts and AR/TAR act in training only; AR/TAR never enter the logged loss.
    c.model.embed_dropout = 0.0  # [dropoute] drop whole embedding rows (words), one mask per forward pass
    c.model.input_dropout = 0.0  # [dropouti] locked dropout on the embedding output: one mask per sequence and feature, all time steps
    c.model.hidden_dropout = 0.0  # [dropouth] locked dropout between stacked layers
    c.model.output_dropout = 0.0  # [dropout] locked dropout on the last layer's output (before the decoder)
    c.model.weight_dropout = 0.0  # [wdrop] DropConnect on hidden-to-hidden matrices (QRNN: its input projection), one mask per layer per forward pass
    c.model.ar_alpha = 0.0  # [alpha] AR: alpha * mean(dropped last output^2), added to the training loss
    c.model.tar_beta = 0.0  # [beta] TAR: beta * mean((h_t+1 - h_t)^2) of the undropped last output, added to the training loss
    c.model.adaptive_cutoffs = ""  # tied adaptive softmax cut-offs, e.g. "2800,20000,76000" (WT103); "" = full softmax
    c.model.qrnn_window = 2  # QRNN convolution window of the first layer, 1 or 2 (later layers: 1, as awd-lstm-lm)
    c.model.qrnn_zoneout = 0.0  # QRNN zoneout rate on the forget gate f
    c.model.qrnn_pooling = "sequential"  # QRNN fo-pooling: "sequential" (lax.scan; faster on CPU) or "associative" (lax.associative_scan)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # optimizer steps to run in total (a resumed run continues up to this)
    c.train.start_from = ""  # a new LM run starts from another run's weights (RUN/best: its best; RUN: its latest, averaged under NT-ASGD), optimizer state fresh (awd-lstm-lm finetune.py); ignored once this run has checkpoints
    c.train.epochs = 0.0  # if > 0, stop after at most this many epochs of the training data
    c.train.batch_size = 128  # global batch: sequences (stream rows) per step over all devices
    c.train.per_device_batch_size = 0  # if > 0, the global batch is this x the device count (replaces train.batch_size)
    c.train.seq_len = 256  # truncated-BPTT length; the RNN state carries over between steps
    c.train.grad_accum_steps = 1  # k > 1: each step takes k consecutive seq_len segments per row (carry continued), gradients summed, one all-reduce, one update
    # Variable-length BPTT (AWD-LSTM): per step, length ~ N(seq_len, 5) w.p. 0.95 else N(seq_len/2, 5),
    # at least 5, at most train.bptt_max, rounded to a multiple of train.bptt_bucket (bounded
    # compiled programs); the step's learning rate is scaled by length / seq_len.
    c.train.variable_bptt = False
    c.train.bptt_max = 0  # variable_bptt: longest sequence; 0 = seq_len + 15 (3 standard deviations)
    c.train.bptt_bucket = 5  # variable_bptt: lengths are rounded to a multiple of this (one compiled step per length)
    c.train.log_every = 50  # steps between train records in metrics.jsonl and the progress bar
    c.train.divergence_factor = 3.0  # LM training: a train loss (logged, or at a save) above this x ln(vocab), a uniform guess's, stops the run as diverged, unsaved; 0 = only one that is not finite
    c.train.eval_every = 500  # steps between validation passes (and one at the end); 0 = only at the end
    c.train.eval_every_epochs = 0.0  # if > 0, validate every this many epochs of the training data instead (at the first step at or past each multiple; 1.0: once an epoch, as awd-lstm-lm), train.eval_every ignored
    c.train.eval_batch_size = 64  # rows of the validation stream (reduced if the split is small); fine-tuning: rows the val/test texts are packed into
    c.train.eval_steps = 0  # max validation steps per pass; 0 = the whole validation split
    c.train.progress_bar = True  # progress on stderr: a tqdm bar on a terminal, else a plain line every train.log_every steps
    c.train.stop_sync_every = 10  # multi-process: steps between the processes' agreement on a SIGTERM/SIGINT stop

    c.optim = ml_collections.ConfigDict()
    # "adam" (the default), "sgd" (plain, as AWD-LSTM), "ntasgd": SGD that switches to averaging the weights (ASGD) when
    # validation loss is worse than the best of those more than optim.ntasgd_nonmono evaluations ago (the averaged weights are then
    # validated and exported), or "asgd": averaging from the first step, the same rule ending the run (awd-lstm-lm finetune.py)
    c.optim.name = "adam"
    c.optim.weight_decay = 0.0  # weight decay factor wd (0 = none); its form and reach are the next two fields
    c.optim.weight_decay_style = "coupled"  # "coupled": L2, wd * param added to the clipped gradient before SGD/Adam (torch's weight_decay, AWD-LSTM); "decoupled": AdamW, lr * wd * param subtracted beside the Adam step (GPT, nanoGPT)
    c.optim.weight_decay_on = "all"  # parameters decayed: "all" (torch, AWD-LSTM) or "matrices" (those of 2+ dims, embeddings included; biases, norm scales and weight-norm gains not: GPT-2, nanoGPT)
    c.optim.lr_drop_epochs = ""  # comma-separated epochs after which the learning rate is multiplied by optim.lr_drop_factor (AWD --when)
    c.optim.lr_drop_factor = 0.1  # factor of each drop in optim.lr_drop_epochs (AWD: divide by 10)
    c.optim.ntasgd_nonmono = 5  # ntasgd/asgd: the n of the non-monotone trigger (AWD --nonmono)
    c.optim.lr = 5e-4  # peak learning rate at optim.base_batch_size (paper: 5e-4 at batch 128)
    c.optim.lr_scaling = "none"  # rescale optim.lr for the global batch B: "none", "linear" (B/base), "sqrt"; B counts rows (sequences): train.grad_accum_steps lengthens each row, it adds none
    c.optim.base_batch_size = 128  # the batch that optim.lr is given for (used by optim.lr_scaling)
    c.optim.lr_max = 0.0  # cap on the rescaled learning rate; 0 = no cap (paper's 32k run: 3e-3)
    # After warmup: "constant", "linear" (to 0), "cosine" (to 0), or "slanted_triangular"
    # (ULMFiT / sentiment-discovery: up from lr/ratio to lr, then down to lr/ratio; no warmup).
    c.optim.schedule = "linear"
    c.optim.stlr_ratio = 100.0  # slanted_triangular: peak over lowest learning rate
    c.optim.stlr_cut_frac = 0.002  # slanted_triangular: fraction of the decay horizon spent rising
    c.optim.warmup_steps = 0  # linear warmup from 0 to the peak rate (optim.lr, scaled by optim.lr_scaling and capped) over this many steps; not with slanted_triangular
    c.optim.decay_steps = 0  # the step where the decay reaches 0; 0 = train.steps
    c.optim.decay_epochs = 0.0  # if > 0, decay over at most this many epochs of the training data
    c.optim.clip = 1.0  # clip gradients by global norm; 0 = no clipping
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.999  # Adam beta2
    c.optim.eps = 1e-8  # Adam epsilon

    c.parallel = ml_collections.ConfigDict()
    c.parallel.grad_reduce_dtype = "float32"  # dtype of the gradients in the step's all-reduce: "float32" or "bfloat16" (half the bytes)
    c.parallel.cpu_devices = 0  # CPU hosts: data-parallel devices to split this host into (training/host_devices.py); 0 = one per core (dividing the batch), 1 = one device
    c.parallel.cpu_huge_pages = True  # CPU hosts (Linux, glibc): restart the tool with malloc on transparent huge pages (training/host_memory.py)

    c.precision = ml_collections.ConfigDict()
    # Matmul dtype: "float32", "bfloat16" or "float16". Params and optimizer state stay
    # float32; logits, loss, weight norm and gradient norms are float32 whatever this is.
    c.precision.compute = "float32"
    c.precision.loss_scale_init = 2.0**32  # float16 only: initial dynamic loss scale (sentiment-discovery)
    c.precision.loss_scale_factor = 2.0  # float16 only: S /= factor on overflow, S *= factor after a window
    c.precision.loss_scale_window = 1000  # float16 only: consecutive finite steps before S grows

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 1000  # steps between checkpoints (also at the end and on SIGTERM/SIGINT)
    c.checkpoint.keep = 3  # most recent checkpoints kept on disk
    c.checkpoint.keep_best = False  # LM training (a fine-tune always keeps its best): also keep the weights with the lowest validation loss (NT-ASGD: averaged) in WORKDIR/best/ (lmscale.eval --best)
    c.checkpoint.fallback = False  # resume from the previous checkpoint when the latest is unreadable (it is moved aside)

    # Fine-tuning an LM into a classifier (`lmscale.finetune`; lmscale.train refuses these
    # set); the LM language-model run whose parameters, model config, tokenizer and
    # preprocessing the classifier starts from.
    c.init_from = ""  # fine-tuning: the trained LM's workdir (only its parameters are restored)
    c.finetune = ml_collections.ConfigDict()
    c.finetune.train = ""  # labeled training texts: .csv/.tsv/.jsonl or tfds:NAME/SPLIT
    c.finetune.val = ""  # labeled validation texts: best checkpoint, multi-label thresholds
    c.finetune.test = ""  # labeled test texts, scored once at the end with the best checkpoint ("" = none)
    c.finetune.text_column = "sentence"  # column/field holding the text
    c.finetune.label_column = "label"  # single-label: one column of class ids 0..K-1; multi-label: comma-separated 0/1 columns
    c.finetune.multilabel = False  # a sigmoid per label column (else one softmax over the classes)
    c.finetune.num_classes = 0  # single-label classes; 0 = max train label + 1 (labels outside 0..K-1 are an error)
    c.finetune.state = ""  # LM states pooled into features, comma-separated ("cell,hidden"); "" = the model's default
    c.finetune.pooling = "last"  # poolings over the text, comma-separated: last (final state), mean, max, min
    c.finetune.head_hidden = ""  # MLP hidden widths, comma-separated ("" = a linear head)
    c.finetune.head_activation = "relu"  # MLP activation: relu, gelu or tanh
    c.finetune.head_dropout = 0.0  # dropout on the features and MLP hidden layers (training only)
    c.finetune.lm_dropout = 0.0  # the LM's own dropouts in training steps, as a multiple of the rates it was trained with (ULMFiT's drop_mult, 0.5 in its classifier); 0 = none (the texts read deterministically)
    c.finetune.class_weights = ""  # loss weight per class (> 0), comma-separated, or "balanced" (N / (K x count): inverse frequency; multi-label: count = the label's positives, and the weight scales the label's whole sigmoid loss, negatives too: finetune.pos_weights weighs the positives only); "" = all 1
    c.finetune.pos_weights = ""  # multi-label only: weight of each label's positive term in its sigmoid loss (PyTorch's pos_weight), comma-separated (> 0), or "balanced" (the label's negatives / positives in the train split); "" = all 1
    c.finetune.aux_lm_weight = 0.0  # weight of the auxiliary next-token LM loss on the texts (real tokens only); 0 = off
    c.finetune.freeze_steps = 0  # the LM stays frozen (bit-identical) for the first this many steps
    c.finetune.lm_init = "pretrained"  # "pretrained": the LM starts from init_from's parameters; "random": same architecture and tokenizer, fresh weights (the control)
    c.finetune.head_lr = 0.0  # peak learning rate of the head, used as given; 0 = the LM's (optim.lr after optim.lr_scaling and lr_max)
    c.finetune.bucket_width = 32  # batch widths are rounded up to a multiple of this many tokens; each width compiles its own step (two with freeze_steps): larger buckets, fewer compiles, more padding (benchmarks/README.md, fine-tuning)
    c.finetune.best_metric = "accuracy"  # val metric that picks the best checkpoint: accuracy, macro_f1, micro_f1, jaccard, mcc or loss
    c.finetune.threshold_metric = "f1"  # multi-label: the val thresholds maximize each label's F1 ("f1"), or go on to the best per-text Jaccard ("jaccard", SemEval's score) or micro F1 of all labels together
    c.finetune.layer_lr_decay = 1.0  # discriminative rates (ULMFiT: 2.6): each LM layer learns at the rate of the one above / this, the embeddings lowest (finetuning/layer_rates.py); 1 = every layer at the LM's rate
    c.finetune.unfreeze_every = 0  # gradual unfreezing (ULMFiT): after freeze_steps the LM's top layer trains, one more group below every this many steps, the embeddings last (a transformer's blocks one by one too); 0 = the whole LM at once
    c.finetune.grad_tokens = 0  # back-propagate through each text's last this many tokens only, the text before read without gradient this many at a time, state carried (bounds a long text's memory; recurrent models); 0 = the whole text
    c.finetune.max_val_texts = 0  # validate on the first this many val texts during training (0 = all); the end uses all
    return c


def config_from_file(path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file: for configs that build on another one by path."""
    name = "_lmscale_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_split(split: str) -> tuple[int, int, int]:
    """'98,1,1' -> (98, 1, 1); the shard counts per cycle for train, val, test."""
    try:
        parts = tuple(int(p) for p in str(split).split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or parts[0] < 1 or min(parts) < 0:
        raise ConfigError(f"data.split must be three shard counts 'train,val,test' with train >= 1, got {split!r}")
    return parts  # type: ignore[return-value]


def check_known_fields(config: ml_collections.ConfigDict) -> None:
    """Refuses fields that ``default_config`` does not have, naming each with the closest known
    one: a config file that sets ``c.model.hiden`` and forgets ``c.lock()`` would otherwise
    add a field nothing reads and train at the default."""
    import difflib

    def flat(d: Any, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            out += flat(v, f"{prefix}{k}.") if isinstance(v, (dict, ml_collections.ConfigDict)) \
                else [f"{prefix}{k}"]
        return out

    known = flat(default_config()) + [f"model.{name}" for name in _own_settings(config)]
    unknown = sorted(set(flat(config)) - set(known))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError(f"unknown config field{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(hints)}: lmscale/config.py lists every field")


def _own_settings(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The ``model`` fields a kind of one's own declares (its ``ModelKind.settings``): a
    config file adds them (``c.model.gate_bias = 1.0`` before ``c.lock()``); () for the
    built-in kinds, whose fields ``default_config`` lists, and for an unknown kind."""
    kind = config.get("model", {}).get("kind")
    if kind in BUILT_IN_KINDS or not isinstance(kind, str):
        return ()
    from lmscale.models.registry import UnknownModelKind, get_kind
    try:
        return tuple(get_kind(kind).settings)
    except UnknownModelKind:
        return ()  # said by validate


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Checks values that cannot work, each error naming the key and the numbers."""
    check_known_fields(config)
    if not isinstance(config.data.train, str) or not config.data.train.strip():
        raise ConfigError(f"data.train must name the training text (a prepared dataset, text "
                          f"paths/globs or 'python_stdlib'), got {config.data.train!r}")
    checks.refuse_none(config, default_config())  # before the checks that compare values
    from lmscale.models import get_kind  # JAX: not at import (module doc)
    from lmscale.models.registry import UnknownModelKind, load_plugins
    try:
        load_plugins()  # a broken plugin fails here, on every process, not later on one
        kind = get_kind(config.model.kind)
    except UnknownModelKind as e:  # names the kinds and how to add one's own
        raise ConfigError(str(e)) from None
    try:
        kind.validate(with_kind_settings(config.model), config.train)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_positive_ints(config, ("train.seq_len", "train.batch_size"))  # before divisibility
    if config.train.eval_steps < 0:
        raise ConfigError("train.eval_steps must be >= 0")
    if not config.train.per_device_batch_size and config.train.batch_size % num_devices:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} is not divisible by the {num_devices} devices; "
            f"use a multiple of {num_devices} (or set train.per_device_batch_size)")
    validate_run_settings(config)
    parse_split(config.data.split)
    if config.data.txt_mode not in ("file", "line"):  # data/sources.py's TXT_MODES; these two
        # were refused by data preparation as "txt_mode ..." / "shard_tokens ...", without data.
        raise ConfigError(f"data.txt_mode must be 'file' or 'line', got {config.data.txt_mode!r}")
    _check_positive_ints(config, ("data.shard_tokens",))
    checks.refuse_init_from(config)
    checks.refuse_finetune_settings(config, default_config())
    checks.check_document_resets(config)
    checks.validate_awd(config)
    if config.train.variable_bptt:
        checks.check_longest_drawn(config, kind)


def validate_run_settings(config: ml_collections.ConfigDict) -> None:
    """The settings LM training and fine-tuning share: the optimizer (``validate_optim``),
    the per-device batch, the step counts (a fine-tune with checkpoint.every=0 failed with a
    ZeroDivisionError after its first step), the precision, the all-reduce's dtype; finite."""
    checks.refuse_none(config, default_config())  # before the checks that compare values
    check_numbers(config)
    validate_optim(config.optim)
    _check_positive_ints(config, ("train.steps", "train.batch_size", "train.stop_sync_every",
                                  "train.log_every", "train.eval_batch_size", "checkpoint.every",
                                  "checkpoint.keep"))
    if config.train.epochs < 0:
        raise ConfigError("train.epochs must be >= 0")
    checks.check_step_counts(config)
    if not 0 <= config.seed < 2**32:  # JAX keys keep 32 bits: -1 ran as 2**32 - 1, silently
        raise ConfigError(f"seed must be in [0, 2**32) (a JAX key's 32 bits: a larger or "
                          f"negative seed would run as another one), got {config.seed}")
    if config.train.eval_every < 0:
        raise ConfigError("train.eval_every must be >= 0")
    if config.train.eval_every_epochs < 0:
        raise ConfigError(f"train.eval_every_epochs must be >= 0 (0: every train.eval_every "
                          f"steps), got {config.train.eval_every_epochs}")
    if config.train.per_device_batch_size < 0:
        raise ConfigError(f"train.per_device_batch_size must be >= 0, got {config.train.per_device_batch_size}")
    if config.precision.compute not in COMPUTE_DTYPES:
        raise ConfigError(f"precision.compute must be one of {list(COMPUTE_DTYPES)}, "
                          f"got {config.precision.compute!r}")
    p = config.precision
    if (not 1 <= p.loss_scale_init <= MAX_LOSS_SCALE or not 1 < p.loss_scale_factor < math.inf
            or not 1 <= p.loss_scale_window < 2**31):  # 2**128 was inf in float32: every
        # step skipped; the window is compared with an int32 count (2**31: an OverflowError
        # traceback at the first float16 step)
        raise ConfigError(f"precision.loss_scale_init must be in [1, 2**64], loss_scale_factor "
                          f"> 1 and finite, and loss_scale_window in [1, 2**31 - 1]; got "
                          f"{p.loss_scale_init:g}, {p.loss_scale_factor:g}, {p.loss_scale_window}")
    if config.parallel.grad_reduce_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"parallel.grad_reduce_dtype must be 'float32' or 'bfloat16', got "
                          f"{config.parallel.grad_reduce_dtype!r}")


def _check_positive_ints(config: ml_collections.ConfigDict, keys: tuple[str, ...]) -> None:
    for key in keys:
        section, name = key.split(".")
        value = config[section][name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def with_global_batch(config: ml_collections.ConfigDict, num_devices: int) -> ml_collections.ConfigDict:
    """A locked copy whose ``train.batch_size`` is the global batch for ``num_devices``, and
    whose ``model`` holds its kind's own settings (a plugin's ``ModelKind.settings``) at their
    defaults where the config never named them: config.json records them, and a kind that
    lists one among its ``fields`` has it (its run stopped with a KeyError).

    ``train.per_device_batch_size`` > 0 gives per-device x devices; otherwise the config's
    global ``train.batch_size`` stands. Everything downstream reads ``train.batch_size``.
    """
    resolved = ml_collections.ConfigDict(config.to_dict())
    if config.train.per_device_batch_size > 0:
        resolved.train.batch_size = config.train.per_device_batch_size * num_devices
    resolved.model = with_kind_settings(resolved.model)
    resolved.lock()
    return resolved


def with_kind_settings(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``model`` with its kind's own settings (a plugin's ``ModelKind.settings``) added at
    their defaults where it lacks them (the built-in kinds' are all fields already)."""
    if model.kind in BUILT_IN_KINDS:
        return model
    from lmscale.models.registry import get_kind  # JAX: not at import (module doc)
    return ml_collections.ConfigDict({**get_kind(model.kind).settings, **model.to_dict()})


def scaled_lr(optim: ml_collections.ConfigDict, batch_size: int) -> float:
    """optim.lr rescaled from optim.base_batch_size to ``batch_size`` by optim.lr_scaling, capped."""
    ratio = batch_size / optim.base_batch_size
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[optim.lr_scaling]
    lr = optim.lr * factor
    return min(lr, optim.lr_max) if optim.lr_max > 0 else lr


class EpochSteps(Protocol):
    """A training stream's conversion between epochs and steps (its epochs may differ in
    length: variable BPTT draws each epoch's lengths anew)."""

    def epoch_step(self, epochs: float) -> float: ...  # the step where ``epochs`` epochs end
    def epochs_done(self, steps: int) -> float: ...  # epochs read by ``steps`` steps


def _epoch_end(epochs: float, steps_per_epoch: int, stream: EpochSteps | None) -> float:
    """The step where ``epochs`` epochs end: where ``stream`` says, else a multiple."""
    return stream.epoch_step(epochs) if stream is not None else epochs * steps_per_epoch


def horizon(config: ml_collections.ConfigDict, steps_per_epoch: int,
            stream: EpochSteps | None = None) -> tuple[int, int]:
    """(steps, decay steps): ``train.steps`` capped by ``train.epochs``, ``optim.decay_steps``
    (0: the steps) by ``optim.decay_epochs``; not yet clamped against the warmup. Epochs end
    where ``stream`` says (default: every ``steps_per_epoch`` steps)."""
    # 1e-9: a product just over a whole step (0.28 x 25 = 7.000000000000001) is that step, as
    # validation_due counts it (8 steps ran 0.32 epochs, validated at 7 and again at 8)
    end = lambda epochs: max(1, math.ceil(_epoch_end(epochs, steps_per_epoch, stream) - 1e-9))
    steps = config.train.steps
    if config.train.epochs > 0:
        steps = min(steps, end(config.train.epochs))
    decay_steps = config.optim.decay_steps or steps
    if config.optim.decay_epochs > 0:
        decay_steps = min(decay_steps, end(config.optim.decay_epochs))
    return steps, decay_steps


def derive(config: ml_collections.ConfigDict, steps_per_epoch: int,
           stream: EpochSteps | None = None) -> dict[str, Any]:
    """Values that follow from the config and the training data; the one place they are
    computed. ``stream``: the training batcher, where epochs end (settings given in epochs:
    under variable BPTT each epoch has its own step count, and multiples of epoch 0's drifted
    by e x the difference: awd's --when 138 steps early on enwik8)."""
    steps, decay_steps = horizon(config, steps_per_epoch, stream)
    tokens_per_step = config.train.batch_size * step_width(config.train)
    return {
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": stream.epochs_done(steps) if stream is not None else steps / steps_per_epoch,
        "tokens_per_step": tokens_per_step,
        "batch_size": config.train.batch_size,
        "lr": scaled_lr(config.optim, config.train.batch_size),
        "decay_steps": max(decay_steps, config.optim.warmup_steps + 1),
        **({"lr_drop_steps": [max(1, round(_epoch_end(e, steps_per_epoch, stream)))
                              for e in parse_epochs(config.optim.lr_drop_epochs)]}
           if config.optim.lr_drop_epochs else {}),
    }


def save_config(config: ml_collections.ConfigDict, derived: dict[str, Any], path: str) -> None:
    """Writes the resolved config (all fields plus "derived") as JSON, atomically."""
    from lmscale.atomic import atomic_write  # no temporary left behind by a failed write
    with atomic_write(path) as f:
        json.dump({**config.to_dict(), "derived": derived}, f, indent=2, sort_keys=True)
        f.write("\n")


def load_config(path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """Reads a config.json written by ``save_config``: (locked config, derived values), with
    ``resume`` true: ``resume=false`` is what one start did (archive, start afresh), and a
    rerun from the run's config.json replayed it, archiving the run it meant to resume."""
    try:
        with open(path) as f:
            record = json.load(f)
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); it is written by lmscale: restore "
                          f"it, or let a training run in that workdir write it again") from None
    if isinstance(record, dict) and "resume" in record:
        record = {**record, "resume": True}
    return config_from_record(record, path)


def config_from_record(record: dict[str, Any], path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """(locked config, derived values) of a record as ``save_config`` writes it (``path`` names
    it in errors); fields missing from an older record keep their defaults, unknown ones fail."""
    if not isinstance(record, dict):
        raise ConfigError(f"{path} is a JSON {type(record).__name__}, not a config record")
    record = dict(record)
    derived = record.pop("derived", {}) or {}
    if not isinstance(derived, dict):  # tools read its fields: an AttributeError traceback
        raise ConfigError(f"{path}: derived is a JSON {type(derived).__name__} ({derived!r:.40}), "
                          f"not a section of fields (the values the run worked out)")
    config = default_config()
    model = record.get("model")
    model = model if isinstance(model, dict) else {}  # another type: _update says which
    kind = model.get("kind")
    if isinstance(kind, str) and kind not in BUILT_IN_KINDS:  # a kind of one's own: its own
        for name, value in model.items():  # fields as recorded (its
            if name not in config.model:  # module, which declares them, is not imported here:
                config.model[name] = value  # this runs while flags are parsed, before JAX)
    _update(config, record, prefix="", path=path)
    config.lock()
    return config, derived


def _update(config: ml_collections.ConfigDict, values: dict[str, Any], prefix: str, path: str) -> None:
    for key, value in values.items():
        if key not in config:
            raise ConfigError(f"{path}: unknown config key {prefix}{key}")
        section = isinstance(config[key], ml_collections.ConfigDict)
        if isinstance(value, dict) and section:
            _update(config[key], value, f"{prefix}{key}.", path)
            continue
        if section:
            raise ConfigError(f"{path}: {prefix}{key} is a JSON {type(value).__name__} "
                              f"({value!r}), not a section of fields")
        try:
            config[key] = value
        except (TypeError, ValueError) as e:  # ml_collections refuses another type
            expected = type(config[key]).__name__
            raise ConfigError(f"{path}: {prefix}{key} is {value!r} ({type(value).__name__}); "
                              f"it takes a value of type {expected}") from e
