"""sentiment-discovery's transformer LM on Amazon reviews, as its README specifies, on 8 GPUs.

Reasoning (the seed: NVIDIA/sentiment-discovery's transformer, fairseq's decoder):
- Decoder-only, 12 blocks, 8 heads, d_model 768, feed-forward 3072, learned positions up to
  256, post-norm blocks, token embedding scaled by sqrt(d_model), no final LayerNorm,
  untied output matrix; weight norm on every block matrix and the output head, not on the
  embeddings (model.weight_norm).
- SentencePiece BPE with 32k pieces: 32,001 ids with padding 0.
- Sequences of 64 tokens; 32 sequences per GPU on 8 GPUs (global 256), no learning-rate
  scaling with the batch; Adam at 1e-4 with cosine annealing.
- float16 with dynamic loss scaling (2**32 start, as the mLSTM recipe); params and Adam state
  float32.
- Dropout 0.1 on the residual branches and embeddings and 0.1 after the feed-forward's
  activation (the seed's arguments.py defaults: --dropout 0.1, --relu-dropout 0.1), none on
  attention probabilities (--attention-dropout 0.0).
- 670,000 steps, cosine to 0 there (the seed's experiments/train_transformer_singlenode.sh:
  --train-iters 670000 --decay-style cosine; about 3 days on 8 V100s).
- No gradient clipping: the seed's --clip defaults to 0 and its transformer script passes
  none (the clip of 1 in its write-up is the mLSTM's). Attention's q, k, v start as one
  Xavier-uniform (3d, d) matrix, fairseq's in_proj.
- Differences: lmscale's untied output head has a bias (32,001 parameters more than the
  seed's bias-free output projection); positions count time steps (the seed's pretrain.py
  feeds [T, B] batches to a make_positions that counts along dim 1, so its learned
  "positions" index the batch slot: a bug not copied). The tokenizer sees other text and
  keeps it whole: the seed cleans every text first (process_str: HTML tags out, unidecode to
  ASCII, html.unescape, whitespace collapsed, framed "\n " + text + " "), trains on its
  corpus cut at '.', with SentencePiece's defaults (nmt_nfkc, a dummy prefix, whitespace
  collapsed, digits merged, coverage 1.0, no byte fallback); lmscale trains on a sample of
  the raw text with identity normalization, whitespace and newlines kept, digits split,
  coverage 0.9995 and byte fallback (lossless: the text decodes back exactly). So the pieces
  and ids differ; --sp_model=the seed's ama_32k_tokenizer.model encodes with its model
  (not its cleaning; prepare names its lossy settings).
- As the seed: reviews are concatenated and attention crosses them within a sequence (no
  data.reset_on_documents), and of the 256 learned positions training reaches the first 64
  only (the run says so; featurizing or generating past 64 tokens reads positions never
  trained, and lmscale.api's score reads windows of 64). --config.model.max_len=64 has none.

    python -m lmscale.prepare --input='/data/amazon/*.json' --text_field=reviewText \
        --output=/data/amazon_sp32k --tokenizer=sentencepiece --vocab_size=32000 --split=1000,1,1
    python -m lmscale.plan --config=configs/transformer_amazon.py --devices=8
    python launch/local.py --num_processes=1 -- python -m lmscale.train \
        --config=configs/transformer_amazon.py --workdir=runs/transformer_amazon \
        --config.data.train=/data/amazon_sp32k
"""

from lmscale.config import default_config


def get_config():
    config = default_config()
    config.data.train = "/data/amazon_sp32k"  # a prepared dataset (see above); override it
    config.data.tokenizer = "sentencepiece"
    config.data.vocab_size = 32000  # pieces; ids are piece + 1, padding 0
    config.data.sp_model_type = "bpe"
    config.data.split = "1000,1,1"
    config.model.kind = "transformer"
    config.model.layers = 12
    config.model.heads = 8
    config.model.d_model = 768
    config.model.d_ff = 3072
    config.model.max_len = 256
    config.model.norm = "post"
    config.model.positions = "learned"
    config.model.weight_norm = True
    config.model.tie_embeddings = False
    config.model.dropout = 0.1
    config.model.attn_dropout = 0.0
    config.model.ff_dropout = 0.1
    config.train.seq_len = 64
    config.train.per_device_batch_size = 32  # x 8 GPUs = 256 global
    config.train.steps = 670_000
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.eval_batch_size = 256
    config.train.eval_steps = 200
    config.optim.lr = 1e-4
    config.optim.lr_scaling = "none"
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 0
    config.optim.clip = 0.0  # none, as the seed's transformer (see above)
    config.precision.compute = "float16"
    config.checkpoint.every = 5000
    config.lock()
    return config
