"""The remedies the messages, help texts and READMEs name exist: a ``--config.a.b`` is a
config field (or a model kind's setting), a ``lmscale.TOOL ... --flag`` one of that tool's
flags (``benchmarks/README.md`` sized batches with ``lmscale.plan --fit``, a flag plan never
had)."""

from __future__ import annotations

import ast
import glob
import os
import re

from tests.conftest import REPO

TOOLS = ("bench", "classify", "convert", "eval", "finetune", "generate", "plan", "prepare",
         "sweep", "train", "transfer")


def _texts():
    """(where, text) of every string literal (f-strings with their values as {}) and comment
    of the package, and of the two READMEs."""
    for path in sorted(glob.glob(os.path.join(REPO, "lmscale", "**", "*.py"), recursive=True)):
        source = open(path, encoding="utf-8").read()
        rel = os.path.relpath(path, REPO)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.JoinedStr):
                yield f"{rel}:{node.lineno}", "".join(
                    v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield f"{rel}:{node.lineno}", node.value
        for n, line in enumerate(source.splitlines(), 1):
            if "#" in line:
                yield f"{rel}:{n}", line[line.index("#"):]
    for md in ("README.md", os.path.join("benchmarks", "README.md")):
        for n, line in enumerate(open(os.path.join(REPO, md), encoding="utf-8"), 1):
            yield f"{md}:{n}", line


def _tool_flags(tool: str) -> set[str]:
    """The flags ``lmscale.TOOL`` defines, read from its source (flags.DEFINE_*, config_flags'
    --config, cli.define_weights_flags' --step/--best), and absl's own."""
    path = os.path.join(REPO, "lmscale", *(("transfer", "__main__.py") if tool == "transfer"
                                           else (f"{tool}.py",)))
    source = open(path, encoding="utf-8").read()
    names = {"help", "helpfull", "helpshort", "flagfile", "undefok"}
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("DEFINE_") and node.args
                and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    if "define_weights_flags(" in source:
        names |= {"step", "best"}
    return names


def test_config_fields_named_by_messages_exist():
    from lmscale.config import default_config
    from lmscale.models import registry  # the package registers the built-in kinds

    config = default_config()
    settings = {s for kind in registry._KINDS.values() for s in kind.settings}
    unknown = []
    for where, text in _texts():
        for key in re.findall(r"--config\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)", text):
            parts = key.split(".")
            if parts[-1].isupper() or all(len(p) == 1 for p in parts):  # --config.FIELD, a.b
                continue
            section, _, name = key.partition(".")
            ok = (section in config and (not name or name in config[section]
                                         or (section == "model" and name in settings)))
            if not ok:
                unknown.append(f"{where}: --config.{key}")
    assert unknown == []


def test_tool_flags_named_by_messages_exist():
    flags = {tool: _tool_flags(tool) for tool in TOOLS}
    tools = "|".join(TOOLS)
    # `lmscale.plan --memory_gib=N`, `python -m lmscale.eval --workdir=RUN --data=...`,
    # "lmscale.prepare's --split", "--text_column of lmscale.prepare"
    command = re.compile(r"lmscale\.(%s)\b((?:\s+(?:\.\.\.|--[\w.]+(?:=\S*)?|[A-Z_]+|"
                         r"\[--[\w.]+(?:=\S*)?\]))+)" % tools)
    owned = re.compile(r"lmscale\.(%s)`{0,2}'s\s+`{0,2}--(\w+)" % tools)
    of_tool = re.compile(r"--(\w+)(?:=\S+)?`{0,2}\s+(?:of|in|for)\s+`{0,2}(?:python -m )?"
                         r"lmscale\.(%s)\b" % tools)
    unknown = []
    for where, text in _texts():
        for m in command.finditer(text):
            unknown += [f"{where}: lmscale.{m.group(1)} --{f}"
                        for f in re.findall(r"--(\w+)(?![\w.])", m.group(2))
                        if f not in flags[m.group(1)]]
        unknown += [f"{where}: lmscale.{t} --{f}" for t, f in owned.findall(text)
                    if f not in flags[t]]
        unknown += [f"{where}: lmscale.{t} --{f}" for f, t in of_tool.findall(text)
                    if f not in flags[t]]
    assert unknown == []


def test_python_names_in_readme_exist():
    """Every ``lmscale.a.b`` the README names for Python code resolves, and every exception it
    names is named once by its full path: "`WorkdirInUseError` when another process holds the
    run" read as ``lmscale.training.checkpoints``' own, which has none (an AttributeError)."""
    import builtins
    import importlib

    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    resolved, unknown = set(), []
    for name in sorted(set(re.findall(r"`(lmscale(?:\.\w+)+)", text))):
        parts = name.split(".")
        if parts[1] in TOOLS or name == "lmscale.json":  # a tool (absl flags), a file's name
            continue
        for i in range(len(parts), 0, -1):
            try:
                obj, rest = importlib.import_module(".".join(parts[:i])), parts[i:]
                break
            except ImportError:
                continue
        for attr in rest:
            obj = getattr(obj, attr, None)
        if obj is None:
            unknown.append(name)
        else:
            resolved.add(name)
    for error in sorted(set(re.findall(r"`(\w+Error)`", text))):
        if not hasattr(builtins, error) and not any(n.endswith("." + error) for n in resolved):
            unknown.append(error)
    assert unknown == []
