"""The sweep report: DIR/report.md, DIR/report.html and learning-curve PNGs.

One table of every point (its fields' values, learning rate, status, final validation BPC,
steps, time, transfer accuracy), one table per pair of axes (a cell per point: the final
validation BPC or ``div``), and the training curves. DIR/notes.md, if present, is
included (the place to compare with a paper).
"""

from __future__ import annotations

import html
import itertools
import json
import math
import os
from typing import Any

import ml_collections

from lmscale.atomic import atomic_write, save_figure
from lmscale.config import scaled_lr
from lmscale.sweeps.divergence import read_records
from lmscale.sweeps.grid import Point, Sweep
from lmscale.sweeps.transfer import read_transfer
from lmscale.sweeps.workdir import IDENTITY_FILE, read_status

Block = tuple  # ("h2", text) | ("p", text) | ("table", header, rows) | ("img", file, alt) | ("md", text)


def point_result(workdir: str, point: Point) -> dict[str, Any]:
    """What the report shows of one point, read from its folder."""
    d = os.path.join(workdir, point.name)
    status = read_status(d) or {}
    records = read_records(d)
    val = [r for r in records if r.get("split") == "val"]
    train = [r for r in records if r.get("split") == "train"]
    derived = _recorded_derived(d)
    if derived.get("steps") is None or derived.get("lr") is None:  # it stopped before writing them
        derived = {**planned(workdir, point), **{k: v for k, v in derived.items() if v is not None}}
    return {"point": point, "status": status.get("status", "not run"),
            "divergence": status.get("divergence"),
            "val_bpc": val[-1]["bpc"] if val else None, "val_step": val[-1]["step"] if val else None,
            "train_bpc": train[-1]["bpc"] if train else None,
            "step": max([status.get("step") or 0] + [r["step"] for r in records]),
            "steps": derived.get("steps"), "lr": derived.get("lr"),
            "tokens_per_step": derived.get("tokens_per_step"), "params": derived.get("params"),
            "wall_s": status.get("wall_s"), "cpu_s": status.get("cpu_s"),
            "transfer": read_transfer(d), "train": train, "val": val,
            "metrics_file": os.path.exists(os.path.join(d, "metrics.jsonl"))}


def _recorded_derived(point_dir: str) -> dict[str, Any]:
    """The ``derived`` section of a point's config.json; {} where there is none to read (not
    written yet, or torn or hand-damaged: the train tool sets such a file aside on its next
    start, and the report shows what the point's settings fix, as for a point without one)."""
    try:
        with open(os.path.join(point_dir, "config.json"), encoding="utf-8") as f:
            derived = json.load(f).get("derived", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return derived if isinstance(derived, dict) else {}


def planned(workdir: str, point: Point) -> dict[str, Any]:
    """The steps and learning rate that a point's settings (DIR/sweep.json's base config with its
    fields) fix without its data or devices: for a point that failed before its config.json."""
    try:
        with open(os.path.join(workdir, IDENTITY_FILE)) as f:
            config = json.load(f)["base_config"]
        for key, value in point.overrides.items():
            *parents, field = key.split(".")
            node = config
            for name in parents:
                node = node[name]
            node[field] = value
        train, optim = config["train"], config["optim"]
        steps = train["steps"] if not train.get("epochs") else None  # epochs: depends on the data
        lr = None  # a scaled lr of a per-device batch depends on the devices
        if optim["lr_scaling"] == "none" or not train.get("per_device_batch_size"):
            lr = scaled_lr(ml_collections.ConfigDict(optim), train["batch_size"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {"steps": steps, "lr": lr}


def outcome(r: dict[str, Any]) -> str:
    """The cell text: final validation BPC, or div / failed / not run."""
    if r["status"] == "div":
        return f"div (step {r['divergence']['step']})" if r.get("divergence") else "div"
    if r["status"] != "ok":
        return r["status"]
    if r["val_bpc"] is not None:
        return f"{r['val_bpc']:.3f}"
    if r["train"]:
        return "ok (no val)"
    return "ok (no records)" if r["metrics_file"] else "ok (no metrics.jsonl)"  # deleted/moved


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_report(workdir: str, sweep: Sweep, *, title: str, command: str = "",
                 totals: dict[str, float] | None = None,
                 transfer_failed: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Writes report.md, report.html, final.png and curves.png in ``workdir``; returns the point
    results. ``transfer_failed``: {point name: error} of the transfers that failed (their cells
    said "–", as a point never transferred)."""
    results = [point_result(workdir, p) for p in sweep.points]
    transfer_failed = transfer_failed or {}
    for r in results:  # old results.json (other labeled sets) shown nowhere as this run's
        r["transfer_failed"] = r["point"].name in transfer_failed
        if r["transfer_failed"]:
            r["transfer"] = None
    has_transfer = any(r["transfer"] for r in results) or bool(transfer_failed)
    blocks: list[Block] = [("h1", title)]
    if sweep.description:
        blocks.append(("p", sweep.description))
    if command:
        blocks.append(("code", command))
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "div", "failed", "interrupted", "not run")}
    for other in sorted({r["status"] for r in results} - set(counts)):  # "running": killed unsaid
        counts[other] = sum(r["status"] == other for r in results)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    wall = sum(r["wall_s"] or 0 for r in results)
    cpu = sum(r["cpu_s"] or 0 for r in results)
    line = f"{len(results)} points: {summary}. Training time summed over points: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU."
    if totals:
        line += " " + " ".join(f"{k}: {v}." for k, v in totals.items())
    blocks.append(("p", line))
    scored = [r for r in results if r["status"] == "ok" and r["val_bpc"] is not None]
    best = min(scored, key=lambda r: r["val_bpc"], default=None)  # diverged/failed: never
    if best is not None:
        blocks.append(("p", f"Lowest validation BPC: {best['point'].name} "
                            f"({best['val_bpc']:.3f}), marked * below. Each point's command is "
                            f"the first line of its NAME/train.log."))
    notes = os.path.join(workdir, "notes.md")
    if os.path.exists(notes):
        with open(notes, encoding="utf-8", errors="replace") as f:  # not the locale's
            blocks.append(("md", f.read()))

    # without a --transfer_test set, the transfer's validation accuracies (were "–" throughout)
    split = "test" if any((r["transfer"] or {}).get("test_accuracy") is not None
                          for r in results) else "val"
    header = [*sweep.axes, "lr", "status", "val BPC", "steps", "wall s", "CPU s"]
    if has_transfer:
        header += [f"transfer {split} acc", f"neuron {split} acc"]
    rows = []
    for r in results:
        row = [_fmt(r["point"].values[a]) for a in sweep.axes]
        row += ["–" if r["lr"] is None else f"{r['lr']:.3g}", r["status"],
                outcome(r) + (" *" if r is best else ""),
                f"{r['step']}/{r['steps'] or '?'}", _num(r["wall_s"]), _num(r["cpu_s"])]
        if has_transfer and r["transfer_failed"]:
            row += ["failed", "failed"]
        elif has_transfer:
            t = r["transfer"] or {}
            row += [_pct(t.get(f"{split}_accuracy")), _pct(t.get(f"neuron_{split}_accuracy"))]
        rows.append(row)
    blocks += [("h2", "All points"), ("table", header, rows)]
    if transfer_failed:
        blocks.append(("p", "Transfer failed: " + "; ".join(
            f"{name}: {error}" for name, error in sorted(transfer_failed.items()))))

    for a, b in itertools.combinations(range(len(sweep.axes)), 2):
        blocks += _pair_tables(sweep, results, a, b, split if has_transfer else None)

    final = _final_plot(workdir, sweep, results, split) if len(sweep.axes) <= 2 else None
    if final:
        blocks += [("h2", "Final validation BPC"), ("img", final, "final validation BPC per point")]
    png = _curves(workdir, sweep, results)
    if png:
        blocks += [("h2", "Learning curves"), ("img", png, "training BPC against characters (tokens) trained on")]
    with atomic_write(os.path.join(workdir, "report.md")) as f:  # a full disk keeps the last
        f.write(_markdown(blocks))
    with atomic_write(os.path.join(workdir, "report.html")) as f:
        f.write(_html(blocks, title))
    return results


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _pair_tables(sweep: Sweep, results: list[dict[str, Any]], a: int, b: int,
                 transfer_split: str | None) -> list[Block]:
    """A table of cells per pair of axes; ``transfer_split``: the accuracy cells show ("test",
    "val"), None for none."""
    axis_a, axis_b = sweep.axes[a], sweep.axes[b]
    others = [x for i, x in enumerate(sweep.axes) if i not in (a, b)]
    blocks: list[Block] = []
    for fixed in itertools.product(*[sweep.axis_values[o] for o in others]):
        where = dict(zip(others, fixed))
        title = f"{axis_a} × {axis_b}" + (f" ({', '.join(f'{k}={_fmt(v)}' for k, v in where.items())})" if where else "")
        rows = []
        for va in sweep.axis_values[axis_a]:
            row = [_fmt(va)]
            for vb in sweep.axis_values[axis_b]:
                want = {**where, axis_a: va, axis_b: vb}
                r = next(r for r in results if all(r["point"].values[k] == v for k, v in want.items()))
                cell = f"{outcome(r)} · {r['step']} steps · {_num(r['wall_s'])} s"
                if transfer_split and r["transfer_failed"]:
                    cell += " · transfer failed"
                elif transfer_split and r["transfer"]:
                    cell += f" · {transfer_split} acc {_pct(r['transfer'][f'{transfer_split}_accuracy'])}"
                row.append(cell)
            rows.append(row)
        blocks += [("h2", f"Validation BPC: {title}"),
                   ("table", [f"{axis_a} \\ {axis_b}", *[_fmt(v) for v in sweep.axis_values[axis_b]]], rows)]
    return blocks


def _curves(workdir: str, sweep: Sweep, results: list[dict[str, Any]]) -> str | None:
    """curves.png: a panel per value of the first axis, a line per point (training BPC)."""
    if not any(r["train"] for r in results):
        return None
    from matplotlib.figure import Figure  # not pyplot: a notebook's backend is left alone
    first = sweep.axes[0]
    panels = sweep.axis_values[first] if len(sweep.axes) > 1 else [None]
    cols = 2 if len(panels) == 4 else min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    finite = [r2["bpc"] for r in results for r2 in r["train"] if r2["bpc"] is not None and math.isfinite(r2["bpc"])]
    top = min(max(finite, default=8.5), 8.5)
    low = min(finite, default=0.0)
    for k, panel in enumerate(panels):
        ax = axes[k // cols][k % cols]
        mine = [r for r in results if panel is None or r["point"].values[first] == panel]
        for r in mine:
            if not r["train"]:
                continue
            per = r["tokens_per_step"] or 1
            xs = [t["step"] * per / 1e6 for t in r["train"]]
            # above the axis' top (a diverged point's last loss): drawn at the top, not off it
            ys = [min(t["bpc"], top) if t["bpc"] is not None and math.isfinite(t["bpc"]) else top
                  for t in r["train"]]
            label = ", ".join(f"{a.rsplit('.', 1)[-1]}={_fmt(r['point'].values[a])}"
                              for a in sweep.axes if panel is None or a != first)
            label += " (div)" if r["status"] == "div" else ""
            (line,) = ax.plot(xs, ys, label=label, linewidth=1.2, linestyle="--" if r["status"] == "div" else "-",
                              marker="." if len(xs) == 1 else None)  # one record: no line to see
            if r["val"]:
                ax.plot([v["step"] * per / 1e6 for v in r["val"]], [v["bpc"] for v in r["val"]], "o",
                        color=line.get_color(), markersize=4)
            if r["status"] == "div":
                ax.plot(xs[-1:], ys[-1:], "x", color=line.get_color(), markersize=8)
        ax.set_ylim(max(low - 0.1, 0), top + 0.1)
        ax.set_xlabel("characters (tokens) trained on, millions")
        ax.set_ylabel("train BPC (dots: validation)")
        if panel is not None:
            ax.set_title(f"{first.rsplit('.', 1)[-1]} = {_fmt(panel)}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    path = os.path.join(workdir, "curves.png")
    save_figure(fig, path, dpi=110)
    fig.clear()
    return "curves.png"


def _final_plot(workdir: str, sweep: Sweep, results: list[dict[str, Any]],
                transfer_split: str = "test") -> str | None:
    """final.png: final validation BPC against the first axis, a line per value of the second
    (diverged points as x at the top); transfer accuracy on a second axis for a 1-axis sweep."""
    if not any(r["val_bpc"] is not None for r in results):
        return None
    from matplotlib.figure import Figure  # not pyplot: a notebook's backend is left alone
    first = sweep.axes[0]
    xs = sweep.axis_values[first]
    series = sweep.axis_values[sweep.axes[1]] if len(sweep.axes) == 2 else [None]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    done = [r["val_bpc"] for r in results if r["status"] == "ok" and r["val_bpc"] is not None]
    top = max(done, default=8.0) + 0.3
    for value in series:
        mine = [next(r for r in results if r["point"].values[first] == x
                     and (value is None or r["point"].values[sweep.axes[1]] == value)) for x in xs]
        ys = [r["val_bpc"] if r["status"] == "ok" else None for r in mine]
        label = None if value is None else f"{sweep.axes[1].rsplit('.', 1)[-1]}={_fmt(value)}"
        (line,) = ax.plot(range(len(xs)), [math.nan if y is None else y for y in ys], "o-", label=label)
        div = [i for i, r in enumerate(mine) if r["status"] == "div"]
        if div:
            ax.plot(div, [top] * len(div), "x", color=line.get_color(), markersize=9)
    ax.set_xticks(range(len(xs)), [_fmt(x) for x in xs])
    ax.set_xlabel(first + ("  (x at the top: diverged)" if any(r["status"] == "div" for r in results) else ""))
    ax.set_ylabel("final validation BPC")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    accs = [(r["transfer"] or {}).get(f"{transfer_split}_accuracy") for r in results]
    if len(sweep.axes) == 1 and any(a is not None for a in accs):
        ax2 = ax.twinx()
        ax2.plot(range(len(xs)), [math.nan if a is None else 100 * a for a in accs], "s--", color="tab:red")
        ax2.set_ylabel(f"transfer {transfer_split} accuracy, %", color="tab:red")
    fig.tight_layout()
    save_figure(fig, os.path.join(workdir, "final.png"), dpi=110)
    fig.clear()
    return "final.png"


def _markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind in ("p", "md"):
            out.append(block[1].rstrip() + "\n")
        elif kind == "code":
            out.append(f"```\n{block[1]}\n```\n")
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n")
    return "\n".join(out)


def _html(blocks: list[Block], title: str) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
           "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}"
           "img{max-width:100%}pre{background:#f6f6f6;padding:8px;overflow-x:auto}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"<h1>{e(block[1])}</h1>")
        elif kind == "h2":
            out.append(f"<h2>{e(block[1])}</h2>")
        elif kind == "p":
            out.append(f"<p>{e(block[1])}</p>")
        elif kind == "code":
            out.append(f"<pre>{e(block[1])}</pre>")
        elif kind == "md":
            out.append(_md_to_html(block[1]))
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in block[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in block[2]]
            out.append("</table>")
        elif kind == "img":
            out.append(f"<img src='{e(block[1])}' alt='{e(block[2])}'>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _md_to_html(text: str) -> str:
    """Enough Markdown for notes: headings, bullet lists, tables, paragraphs (escaped)."""
    out: list[str] = []
    for para in text.strip().split("\n\n"):
        lines = para.strip().splitlines()
        if not lines:
            continue
        if lines[0].startswith("#"):
            level = min(len(lines[0]) - len(lines[0].lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{html.escape(lines[0].lstrip('#').strip())}</h{level}>")
            lines = lines[1:]
            if not lines:
                continue
        if all(line.startswith("|") for line in lines):
            cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines
                     if not set(line.replace("|", "").strip()) <= set("-: ")]
            out.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>"
                                 for c in row) + "</tr>" for i, row in enumerate(cells)) + "</table>")
        elif all(line.lstrip().startswith(("- ", "* ")) or line.startswith("  ") for line in lines):
            items, current = [], ""
            for line in lines:
                if line.lstrip().startswith(("- ", "* ")):
                    if current:
                        items.append(current)
                    current = line.lstrip()[2:]
                else:
                    current += " " + line.strip()
            items.append(current)
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        else:
            out.append(f"<p>{html.escape(' '.join(lines))}</p>")
    return "\n".join(out)
