"""Sweep files and their grids: what the points of a sweep are.

A sweep file is a Python file with ``get_sweep()`` returning a dict::

    def get_sweep(cpu_budget_minutes=None):      # the argument is optional
        return {
            "grid": {                              # the product of these axes, in this order
                "model.hidden": [64, 128, 256],    # a config field -> its values
                "rule": {                          # a named axis -> {label: {field: value}}
                    "none": {"optim.lr_scaling": "none"},   # (fields that move together)
                    "linear+cap": {"optim.lr_scaling": "linear", "optim.lr_max": 3e-3},
                },
            },
            "derived": lambda point: {"train.steps": ...},  # optional: more fields per point
            "description": "...",                  # optional: shown in the report
        }

``point`` given to ``derived`` holds every axis's value (a field's value, a named axis's
label) and every field set so far. Each point becomes an ordinary run whose config is the
base config with the point's fields overridden.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import inspect
import itertools
import os
import re
from typing import Any, Callable

import ml_collections

from lmscale.config import ConfigError, validate


class SweepError(ValueError):
    """A sweep that cannot run; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep: its axis values (labels), the config fields it sets, its folder name."""

    name: str
    values: dict[str, Any]  # axis -> value (a field's value or a named axis's label)
    overrides: dict[str, Any]  # config field -> value, the run's overrides of the base config

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": self.values, "overrides": self.overrides}


@dataclasses.dataclass
class Sweep:
    """An expanded sweep: its axes (in order), their values, and the points."""

    axes: list[str]
    axis_values: dict[str, list[Any]]
    points: list[Point]
    description: str = ""


def load_sweep_spec(path: str, cpu_budget_minutes: float | None = None) -> dict[str, Any]:
    """Calls ``get_sweep()`` of the sweep file (with the CPU budget, if given)."""
    if not os.path.isfile(path):
        raise SweepError(f"sweep file {path} does not exist")
    name = "_lmscale_sweep_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SweepError(f"cannot load sweep file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_sweep: Callable[..., Any] | None = getattr(module, "get_sweep", None)
    if get_sweep is None:
        raise SweepError(f"sweep file {path} has no get_sweep() function")
    if cpu_budget_minutes is None:
        result = get_sweep()
    else:
        if "cpu_budget_minutes" not in inspect.signature(get_sweep).parameters:
            raise SweepError(f"sweep file {path} has no CPU-budget rule: its get_sweep() takes no "
                             f"cpu_budget_minutes argument")
        result = get_sweep(cpu_budget_minutes=cpu_budget_minutes)
    if not isinstance(result, dict) or "grid" not in result:
        raise SweepError(f"get_sweep() of {path} must return a dict with a 'grid'")
    return result


def expand(spec: dict[str, Any], base: ml_collections.ConfigDict) -> Sweep:
    """The points of a sweep spec, each checked against the base config (fields and values)."""
    unknown = set(spec) - {"grid", "derived", "description"}
    if unknown:
        raise SweepError(f"unknown sweep keys {sorted(unknown)}; expected 'grid', 'derived', 'description'")
    grid = spec["grid"]
    if not isinstance(grid, dict) or not grid:
        raise SweepError("the sweep's grid is empty: give at least one axis with at least one value")
    axes: list[str] = []
    choices: list[list[tuple[Any, dict[str, Any]]]] = []  # per axis: (value/label, fields it sets)
    for axis, values in grid.items():
        if isinstance(values, dict):  # a named axis: label -> fields
            opts = []
            for label, fields in values.items():
                if not isinstance(fields, dict):
                    raise SweepError(f"named axis {axis!r}: label {label!r} must map to a dict of fields")
                opts.append((label, dict(fields)))
        elif isinstance(values, (list, tuple)):
            opts = [(v, {axis: v}) for v in values]
        else:
            raise SweepError(f"axis {axis!r} must be a list of values or a dict of labelled field sets, "
                             f"got {type(values).__name__}")
        if not opts:
            raise SweepError(f"the sweep's grid is empty: axis {axis!r} has no values")
        axes.append(axis)
        choices.append(opts)
    derived = spec.get("derived")
    if derived is not None and not callable(derived):
        raise SweepError("the sweep's 'derived' must be a function of a point")
    points = []
    for combo in itertools.product(*choices):
        values = {axis: value for axis, (value, _) in zip(axes, combo)}
        overrides: dict[str, Any] = {}
        setter: dict[str, str] = {}  # field -> the axis that set it
        for axis, (_, fields) in zip(axes, combo):
            for field, value in fields.items():
                if field in overrides and setter[field] != axis:  # the last one won, the
                    # point's name and the report showing the other's value
                    raise SweepError(f"axes {setter[field]!r} and {axis!r} both set {field} "
                                     f"({overrides[field]!r} and {value!r}): set each field "
                                     f"on one axis")
                overrides[field], setter[field] = value, axis
        if derived is not None:
            extra = derived({**values, **overrides})
            if not isinstance(extra, dict):
                raise SweepError("the sweep's 'derived' must return a dict of fields")
            for field, value in extra.items():
                if field in overrides and overrides[field] != value:
                    raise SweepError(f"the sweep's 'derived' sets {field}={value!r} over axis "
                                     f"{setter[field]!r}'s {overrides[field]!r} (point "
                                     f"{point_name(values)}): derive other fields only")
            overrides.update(extra)
        points.append(Point(point_name(values), values, overrides))
    for point in points:
        point_config(base, point.overrides)
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        twins = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(f"points of the grid share a name (their folder): {twins}; values that "
                         f"differ only past the name's precision cannot be told apart")
    runs = [tuple(sorted((k, repr(v)) for k, v in p.overrides.items())) for p in points]
    if len(set(runs)) != len(runs):  # two labels of one run: trained twice
        twins = sorted({p.name for p, r in zip(points, runs) if runs.count(r) > 1})
        raise SweepError(f"points {twins} set the same fields to the same values: one run "
                         f"under several names; drop all but one")
    return Sweep(axes, {a: [v for v, _ in opts] for a, opts in zip(axes, choices)}, points,
                 spec.get("description", ""))


def point_config(base: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """The base config with a point's fields set; an unknown field or bad value is a SweepError."""
    config = copy.deepcopy(base)
    for field, value in overrides.items():
        parent, key = _resolve(config, field)
        held = parent[key]  # ml_collections takes a bool for an int field (True == 1); the
        # trainer's flag parser then refused "true", the point failing after the sweep began
        if held is not None and isinstance(value, bool) != isinstance(held, bool):
            raise SweepError(f"swept field {field}={value!r}: the field holds "
                             f"{type(held).__name__} values, like {held!r}")
        try:
            setattr(parent, key, value)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise SweepError(f"swept field {field}={value!r}: {e}") from None
    try:
        validate(config)
    except ConfigError as e:
        raise SweepError(f"point {overrides}: {e}") from None
    return config


def _resolve(config: ml_collections.ConfigDict, field: str) -> tuple[ml_collections.ConfigDict, str]:
    parts = field.split(".")
    node = config
    for i, part in enumerate(parts):
        keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        if part not in keys:
            where = ".".join(parts[:i])
            full = [f"{where}.{k}" if where else k for k in keys]
            close = difflib.get_close_matches(field, full, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SweepError(f"swept field {field!r} is not a config field{hint}")
        if i < len(parts) - 1:
            node = node[part]
    if isinstance(node[parts[-1]], ml_collections.ConfigDict):
        raise SweepError(f"swept field {field!r} is a group of fields, not a field")
    return node, parts[-1]


def point_name(values: dict[str, Any]) -> str:
    """A folder name from a point's axis values: ``hidden-256_rule-linear+cap``."""
    parts = []
    for axis, value in values.items():
        short = axis.rsplit(".", 1)[-1]
        parts.append(f"{short}-{_fmt(value)}")
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", "_".join(parts))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def override_flags(overrides: dict[str, Any]) -> list[str]:
    """``--config.FIELD=VALUE`` flags for ``lmscale.train`` (floats exactly, bools lower-case)."""
    flags = []
    for field, value in overrides.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        flags.append(f"--config.{field}={text}")
    return flags
