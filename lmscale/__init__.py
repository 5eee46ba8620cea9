"""lmscale: fast large-scale language models in JAX and transfer to text classification."""

from __future__ import annotations

from typing import Any

from lmscale.data.errors import DataError


def load_lm(workdir: str, step: int | None = None, compute: str = "float32",
            best: bool = False) -> Any:
    """Loads a trained LM for notebooks: ``.score``, ``.featurize``, ``.generate`` (see
    lmscale.api); ``compute="bfloat16"`` runs its matmuls in bfloat16 (faster on CPUs with
    AMX and on GPUs); ``best``: the weights validated best (``checkpoint.keep_best``)."""
    import os
    from lmscale.api import load_lm as _load
    from lmscale.messages import errors_for_caller
    with errors_for_caller():  # config fields and arguments, not the tools' flags
        return _load(os.path.expanduser(workdir) if isinstance(workdir, str) else workdir, step,
                     compute, best)


def load_classifier(path: str, batch_size: int = 0) -> Any:
    """A fine-tuned run or transfer output for notebooks: ``.predict(texts)`` -> (probs, labels),
    the texts packed end to end in ``batch_size`` rows read side by side (0: a fine-tuned
    run's validation rows, ``train.eval_batch_size``; else 64)."""
    import os
    from lmscale.compiled_programs import release_near_map_limit
    from lmscale.finetuning.classifier import load_classifier as _load
    from lmscale.messages import check_call_arguments, errors_for_caller
    check_call_arguments(path, name="path", folder="a classifier's folder")
    release_near_map_limit()
    with errors_for_caller():
        return _load(os.path.expanduser(path) if isinstance(path, str) else path, batch_size)


def use_cpu_cores(batch_size: int, devices: int = 0) -> int | None:
    """Notebooks on a CPU-only machine: run training data parallel over the cores.

    Call it first, before anything starts JAX (``jax.devices()``, ``jax.default_backend()``,
    creating an array). It splits the host into one XLA CPU device per core, reduced to a
    count that divides ``batch_size`` (or into ``devices``), as ``python -m lmscale.train``
    does with ``parallel.cpu_devices`` (the quickstart step is ~1.4x faster on 2 cores).
    Returns the device count, or None where it changes nothing: JAX already started, the
    user set a device count, an accelerator is installed, or one core.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be the global batch size (an int >= 1), got {batch_size!r}")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 0:
        raise ValueError(f"devices must be an int >= 0 (0: one per core), got {devices!r}")
    if devices and batch_size % devices:  # train() refused it only after JAX had started
        raise ValueError(f"devices={devices} does not divide batch_size={batch_size}: give a "
                         f"divisor of it, or 0 (one per core, reduced to a count that divides it)")
    from lmscale.training.host_devices import split_cpu_host
    return split_cpu_host(batch_size, devices)


__all__ = ["DataError", "load_classifier", "load_lm", "use_cpu_cores"]
