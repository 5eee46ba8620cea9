"""Fine-tuning lmscale LMs into text classifiers (single- and multi-label) and applying them.

head.py (Classifier: LM + pooled features + linear/MLP head), data.py (labeled batches),
steps.py (shard_map step, one all-reduce), metrics.py (scikit-learn metrics, thresholds),
loop.py (``finetune``), predict.py (probabilities, predictions CSV), classifier.py
(``load_classifier``: a fine-tuned run or a ``lmscale.transfer`` output).
"""
