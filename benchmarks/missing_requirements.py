"""Which of lmscale's requirements this Python lacks: for machines set up by someone else.

    python benchmarks/missing_requirements.py [--extras test] [--also pytest] \
        [--pyproject pyproject.toml]

Reads ``[project].dependencies`` (and the named optional extras, or single requirements of
any extra picked by name with ``--also``) from pyproject.toml and prints, on one line, each requirement that is not installed or whose installed version is
outside its range (``name>=x (have y)``); nothing when all are met. Exit status 0 either
way. ``benchmarks/gpu_check.sh`` runs it before spending GPU time: an image with JAX and
CUDA may still lack a pure-Python package lmscale needs (the H200 image lacked ml-collections
and tensorboardX), which ``benchmarks/gpu_wheels.sh`` fetches as wheels to carry there.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tomllib

from packaging.requirements import Requirement


def requirements(pyproject: str, extras: list[str], also: list[str] = ()) -> list[Requirement]:
    """``[project].dependencies`` of a pyproject.toml, plus the listed optional extras and the
    requirements named in ``also`` (looked up in any extra)."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f).get("project", {})
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no optional extra {unknown}; it has {sorted(optional)}")
    reqs = [Requirement(s) for s in project.get("dependencies", [])]
    for extra in extras:
        reqs += [Requirement(s) for s in optional[extra]]
    in_extras = {r.name: r for specs in optional.values() for r in map(Requirement, specs)}
    for name in also:
        if name not in in_extras:
            raise SystemExit(f"{pyproject}: no optional requirement named {name!r}")
        reqs.append(in_extras[name])
    return reqs


def unmet(reqs: list[Requirement]) -> list[str]:
    """The requirements not installed (``name``) or out of range (``name>=x (have y)``)."""
    out = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(req.name)
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(f"{req.name}{req.specifier} (have {have})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", default="pyproject.toml")
    parser.add_argument("--extras", default="", help="comma-separated optional extras")
    parser.add_argument("--also", default="",
                        help="comma-separated requirement names taken from any optional extra")
    args = parser.parse_args(argv)
    split = lambda text: [e for e in text.split(",") if e]
    print(" ".join(unmet(requirements(args.pyproject, split(args.extras), split(args.also)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
