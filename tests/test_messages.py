"""Messages worded for their reader: the command-line tools name their flags, the Python API
(a notebook) config fields and arguments."""

from __future__ import annotations

import pytest

from lmscale import messages
from lmscale.messages import errors_for_caller, for_caller

MESSAGE = ("use another --workdir, the same model config (--config.model.hidden=64), or "
           "--config.resume=false; raise --config.train.steps; data.x='a b' (set "
           "--config.finetune.text_column / --config.finetune.label_column)")


def test_the_api_is_told_config_fields_and_the_cli_its_flags():
    assert for_caller(MESSAGE) == (
        "use another workdir, the same model config (config.model.hidden = 64), or "
        "config.resume = False; raise config.train.steps; data.x='a b' (set "
        "config.finetune.text_column / config.finetune.label_column)")
    assert for_caller("--config.data.train=corpus.txt --config.optim.lr=0.5") == (
        "config.data.train=corpus.txt config.optim.lr = 0.5")
    assert for_caller("(set --text_column / --label_column); pass --output=DIR; --step=3 or "
                      "--best; runs/a--b and /x/--y kept") == (
        "(set text_column / label_column); pass output=DIR; step=3 or best; runs/a--b and "
        "/x/--y kept")
    with messages.command_line():  # what run_cli sets while its tool runs, and no longer
        assert for_caller(MESSAGE) == MESSAGE
    assert for_caller(MESSAGE) != MESSAGE
    from lmscale.cli import run_cli
    assert run_cli(lambda: for_caller(MESSAGE)) == MESSAGE and for_caller(MESSAGE) != MESSAGE
    # A command to paste stays one: "python -m lmscale.convert from=openai src=..." was said
    assert for_caller("import them first with python -m lmscale.convert --from=openai --src=X "
                      "--to=WORKDIR, then pass --workdir=WORKDIR; run `python -m lmscale.plan "
                      "--config=... --memory_gib=N`; XLA_FLAGS=--xla_force_host_platform_"
                      "device_count=8") == (
        "import them first with python -m lmscale.convert --from=openai --src=X --to=WORKDIR, "
        "then pass workdir=WORKDIR; run `python -m lmscale.plan --config=... --memory_gib=N`; "
        "XLA_FLAGS=--xla_force_host_platform_device_count=8")
    # A value other than true/false/a number is left as written: a path with spaces was cut
    # at its first space and quoted in two ("= '/a' b/c").
    assert for_caller("(--config.init_from=/My Drive/lm. starts) --config.pooling=last,mean "
                      "--config.resume=false. --config.train.steps=N --config.data.split=8,1,1 "
                      "--config.optim.lr=1e-3, --config.x=2.") == (
        "(config.init_from=/My Drive/lm. starts) config.pooling=last,mean "
        "config.resume = False. config.train.steps=N config.data.split=8,1,1 "
        "config.optim.lr = 1e-3, config.x = 2.")


def test_an_error_leaving_the_api_is_reworded_and_keeps_its_type():
    with pytest.raises(ValueError, match=r"^or config\.resume = False$"):
        with errors_for_caller():
            raise ValueError("or --config.resume=false")
    with pytest.raises(KeyError):  # str(e) is not its message: left as it is
        with errors_for_caller():
            raise KeyError("--config.x=1")


def test_load_lm_names_config_fields(sst_run):
    """lmscale.load_lm(run, best=True) of a run that kept no best weights said "train with
    --config.checkpoint.keep_best=true" where run_transfer(best=True) said the field."""
    import lmscale
    with pytest.raises(Exception, match=r"config\.checkpoint\.keep_best = True") as e:
        lmscale.load_lm(sst_run, best=True)
    assert "--config" not in str(e.value)


def test_xlas_out_of_memory_is_one_line_naming_the_memory(capsys):
    """RESOURCE_EXHAUSTED from XLA (a state that fits the host but not what ``ulimit -v``
    leaves) was a JaxRuntimeError traceback through JAX's frames."""
    import jax.numpy as jnp

    from lmscale.cli import run_cli
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: jnp.zeros((2 ** 43,), jnp.float32).block_until_ready())  # 32 TiB
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: out of memory (RESOURCE_EXHAUSTED: Out of memory allocating 35184372088832 "
        "bytes.): the run does not fit this host's memory"), err
    with pytest.raises(RuntimeError, match="other"):  # any other runtime error: as it was
        run_cli(lambda: (_ for _ in ()).throw(RuntimeError("other")))


def test_out_of_memory_in_a_tool_with_a_batch_flag_names_that_flag():
    """eval, classify and lmscale.transfer size their batches by --batch_size: their
    out-of-memory line said "lower train.batch_size ... lmscale.plan --config=...", a config
    they do not take."""
    from tests.conftest import script_result
    result = script_result(
        "import json, sys\n"
        "import lmscale.eval  # defines --batch_size, as classify and lmscale.transfer do\n"
        "from lmscale.cli import out_of_memory_line\n"
        "print(json.dumps(out_of_memory_line(RuntimeError(\n"
        "    'RESOURCE_EXHAUSTED: Out of memory allocating 8 bytes.'))))\n")
    assert result.endswith("lower --batch_size"), result
    assert "train.batch_size" not in result and "lmscale.plan" not in result


def test_out_of_memory_in_convert_does_not_name_its_batch_flag():
    """convert's --batch_size is a written workdir's train.batch_size: "lower --batch_size"
    changed nothing of what it holds (the weights, whole)."""
    from tests.conftest import script_result
    result = script_result(
        "import json, sys\n"
        "import lmscale.convert\n"
        "from lmscale.cli import out_of_memory_line\n"
        "print(json.dumps(out_of_memory_line(RuntimeError(\n"
        "    'RESOURCE_EXHAUSTED: Out of memory allocating 8 bytes.'))))\n")
    assert result.endswith("converting holds the weights whole: run it on a host with more "
                           "memory"), result
    assert "batch_size" not in result and "lmscale.plan" not in result


def test_the_out_of_memory_line_names_a_ulimit_only_where_one_is_set(monkeypatch):
    """The address-space limit (``ulimit -v``) is said where one is set, and nothing of it
    without one; an error that is not XLA's "RESOURCE_EXHAUSTED: Out of memory" (tensorstore's
    RESOURCE_EXHAUSTED of a full disk, say) is no out-of-memory line."""
    import resource

    from lmscale.cli import out_of_memory_line
    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8 bytes.")
    unlimited = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda which: (unlimited, unlimited))
    line = out_of_memory_line(oom)  # its advice follows the tools' flags this process defined
    assert "this host's memory; " in line and "ulimit" not in line, line
    monkeypatch.setattr(resource, "getrlimit", lambda which: (3 * 2 ** 30, unlimited))
    assert ("this host's memory (this process may map at most 3.0 GiB: ulimit -v); "
            in out_of_memory_line(oom))
    assert out_of_memory_line(RuntimeError("RESOURCE_EXHAUSTED: Error writing w/0: [errno 28] "
                                           "No space left on device")) is None
    assert out_of_memory_line(RuntimeError("Out of memory in the tokenizer's cache")) is None


def test_out_of_memory_in_bench_gives_the_training_advice():
    """bench has a --layout flag as convert does, and a config's training settings to lower:
    not convert's "converting holds the weights whole"."""
    from tests.conftest import script_result
    result = script_result(
        "import json, sys\n"
        "import lmscale.bench\n"
        "from lmscale.cli import out_of_memory_line\n"
        "print(json.dumps(out_of_memory_line(RuntimeError(\n"
        "    'RESOURCE_EXHAUSTED: Out of memory allocating 8 bytes.'))))\n")
    assert "lower train.batch_size or the model's size" in result, result
    assert "converting" not in result
