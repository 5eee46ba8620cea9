"""Data layer: text -> tokens (bytes or SentencePiece subwords) -> sharded datasets -> LM batches.

Modules: ``tokenizer`` (the interface, byte ids), ``spm`` (SentencePiece), ``sample``
(bounded text samples to train it on), ``tfds`` (tfds: inputs), ``sources`` (files -> documents), ``builtin``
(corpora present on every machine), ``prepare`` (sharding, atomic), ``dataset``
(memory-mapped reading), ``stream`` (``StreamBatcher``), ``errors`` (``DataError``).
"""
