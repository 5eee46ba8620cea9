"""The suite's test processes keep their compiled programs below the kernel's limit on memory
maps (lmscale/compiled_programs.py says why).

A test process that ran a few hundred test files held 40-48 k maps (measured: both xdist
workers of the whole suite, 2026-12-07), near Linux's default limit of 65,530; past it,
jaxlib's next compilation-cache write (``executable.serialize()`` in
``compilation_cache.put_executable_and_time``) died of SIGSEGV, reproduced at once by holding
64.5 k maps before ``test_bfloat16_lm`` (a worker of two CI runs died there, in
``test_lm.py`` and ``test_eval_rows.py``). So at the end of a test file, a process that holds
more than half the limit drops JAX's caches of compiled programs: those of finished tests are
freed (4,662 maps to 583 after ``test_transformer.py``), and a later test compiles its own
again (read from the session's persistent cache). No file adds more than ~17 k maps
(``tests/models/test_recurrent_vjp.py``), so a process stays under ~50 k.
"""

from __future__ import annotations

import pytest

from lmscale.compiled_programs import release_near_map_limit


@pytest.hookimpl(trylast=True)  # after the runner's own, which tears down the file's fixtures
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """At the end of each test file: release_near_map_limit, without its note."""
    if nextitem is None or nextitem.path != item.path:
        release_near_map_limit(say=False)
