"""Model kinds of one's own (registry.load_plugins): a broken plugin fails at the config's
validation, on every process, even for a built-in kind (it failed later, on process 0 only);
a module that registers its kind and then fails leaves nothing registered."""

from __future__ import annotations

import sys

import pytest

from lmscale.config import ConfigError, default_config, validate
from lmscale.models import registry


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("half_kind", "broken_kind"):
        sys.modules.pop(name, None)
        registry._KINDS.pop(name.split("_")[0], None)


def test_a_broken_plugin_fails_the_validation_of_any_kind(plugin_dir, monkeypatch):
    (plugin_dir / "broken_kind.py").write_text("raise RuntimeError('no GPU kernel here')\n")
    monkeypatch.setenv(registry.PLUGIN_ENV, "broken_kind")
    config = default_config()  # an lstm: no plugin needed, but the run would meet it later
    with pytest.raises(ConfigError, match=r"cannot import the model module 'broken_kind' "
                                          r"\(LMSCALE_MODEL_MODULES\): RuntimeError: no GPU kernel here"):
        validate(config)


def test_a_plugin_that_fails_after_registering_leaves_nothing(plugin_dir, monkeypatch):
    (plugin_dir / "half_kind.py").write_text(
        "from lmscale.models.registry import ModelKind, register\n"
        "register(ModelKind(name='half', fields=(), build=None, validate=None,\n"
        "                   flops_per_token=None, describe=None))\n"
        "raise ImportError('a dependency is missing')\n")
    monkeypatch.setenv(registry.PLUGIN_ENV, "half_kind")
    for _ in range(2):  # the second look fails the same way (it found the half kind)
        with pytest.raises(registry.UnknownModelKind, match="a dependency is missing"):
            registry.get_kind("half")
    assert "half" not in registry._KINDS
