"""Transfer: featurize text with a trained LM, classify with L1 logistic regression, find and
show the sentiment neuron. Entry point: ``python -m lmscale.transfer``; library:
:func:`lmscale.transfer.run.run_transfer`, :func:`lmscale.transfer.featurize.featurize`."""
