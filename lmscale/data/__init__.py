"""Data layer: text -> byte tokens -> sharded datasets -> stateful-RNN LM batches.

Modules: ``tokenizer`` (byte ids), ``sources`` (files -> documents), ``builtin``
(corpora present on every machine), ``prepare`` (sharding, atomic), ``dataset``
(memory-mapped reading), ``stream`` (``StreamBatcher``), ``errors`` (``DataError``).
"""
