"""The dry-run report: an HTML page, PNG plots and the JSON verdict, in one directory.

Files written by :func:`write_report`:

- ``dryrun.json``: the verdict, as ``rampguard dry-run --json`` prints it;
- ``load_vs_limit.png``: for each level of the tree (node kind), the largest load over its
  continuous limit against time, with the limit at 1.0;
- ``inlet.png``: inlet temperature of every cooling zone, with the allowable temperature;
- ``servers.png``: energized and working servers, and the total IT power;
- ``sources.png``: the power of every source and UPS that has a ramp or step limit;
- ``index.html``: the verdict, the trips, the violations, the events and the plots.

Plots use matplotlib's object API with the Agg canvas: no display, no global backend switch.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from controller.dryrun import DryRunResult
from controller.topology import KIND_NAMES

FILES = ("index.html", "dryrun.json", "load_vs_limit.png", "inlet.png", "servers.png",
         "sources.png")
MAX_ROWS = 200


def write_report(result: DryRunResult, directory: str | Path) -> list[Path]:
    """Write the report files into ``directory`` (created if needed); return their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    hist = result.history.arrays()
    summary = result.to_json()
    paths = [out / name for name in FILES]
    (out / "dryrun.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _plot_levels(hist, result, out / "load_vs_limit.png")
    _plot_inlets(hist, result, out / "inlet.png")
    _plot_servers(hist, summary, out / "servers.png")
    _plot_sources(hist, result, out / "sources.png")
    (out / "index.html").write_text(_html(summary), encoding="utf-8")
    return paths


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)


def _minutes(t_s: np.ndarray) -> np.ndarray:
    return t_s / 60.0


def _plot_levels(hist: dict[str, np.ndarray], result: DryRunResult, path: Path) -> None:
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.add_subplot()
    t = _minutes(hist["t_s"])
    present = set(int(k) for k in np.unique(result.topo.node_kind))
    for code, name in enumerate(KIND_NAMES):
        if code in present and hist["utilization"].size:
            ax.plot(t, hist["utilization"][:, code], label=name, linewidth=1.2)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="continuous limit")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("largest load / continuous limit")
    ax.set_title(f"{result.summary['hall']}: load against limit per level "
                 f"({result.summary['strategy']}, {result.summary['scenario']})")
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _plot_inlets(hist: dict[str, np.ndarray], result: DryRunResult, path: Path) -> None:
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.add_subplot()
    t = _minutes(hist["t_s"])
    topo = result.topo
    inlet = hist["inlet_c"]
    for z, name in enumerate(topo.zone_id):
        if inlet.size:
            ax.plot(t, inlet[:, z], label=name, linewidth=1.2)
    for value in sorted(set(np.asarray(topo.zone_inlet_allowable_c).tolist())):
        ax.axhline(value, color="red", linestyle="--", linewidth=1,
                   label=f"allowable {value:g} °C")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("inlet temperature (°C)")
    ax.set_title("inlet temperature per cooling zone")
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _plot_servers(hist: dict[str, np.ndarray], summary: dict[str, Any], path: Path) -> None:
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.add_subplot()
    t = _minutes(hist["t_s"])
    ax.plot(t, hist["energized"], label="energized", linewidth=1.5)
    ax.plot(t, hist["working"], label="working", linewidth=1.5)
    ax.axhline(summary["total_servers"], color="grey", linestyle=":", linewidth=1,
               label="all servers")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("servers")
    ax2 = ax.twinx()
    ax2.plot(t, hist["it_w"] / 1e3, color="black", alpha=0.4, linewidth=1, label="IT power")
    ax2.set_ylabel("IT power (kW)")
    ax.set_title("energized servers")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _plot_sources(hist: dict[str, np.ndarray], result: DryRunResult, path: Path) -> None:
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.add_subplot()
    t = _minutes(hist["t_s"])
    ramp = hist["ramp_w"]
    names = result.ramp_node_ids
    for j, name in enumerate(names[:24]):
        if ramp.ndim == 2 and ramp.shape[1] > j:
            ax.plot(t, ramp[:, j] / 1e3, label=name, linewidth=1)
    ax.set_xlabel("time (min)")
    ax.set_ylabel("power (kW)")
    ax.set_title("sources and UPSs with ramp or step limits")
    if names:
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _table(rows: list[dict[str, Any]], columns: list[str], total: int) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows[:MAX_ROWS]:
        cells = "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns)
        body.append(f"<tr>{cells}</tr>")
    more = f"<p>… {total - MAX_ROWS} more in dryrun.json</p>" if total > MAX_ROWS else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


def _html(s: dict[str, Any]) -> str:
    verdict = "OK: no trip, no violation" if s["ok"] else (
        f"UNSAFE: {s['trips_total']} trip(s), {s['violations_total']} violation(s)")
    facts = [
        ("config", s["config"]), ("hall", s["hall"]), ("strategy", s["strategy"]),
        ("scenario", s["scenario"]), ("seed", s["seed"]),
        ("time to full power (s)", s["time_to_full_power_s"]),
        ("lower bound (s)", f"{s['lower_bound_s']} ({s['lower_bound_kind']})"),
        ("bring-up settled (s)", s["bring_up_settled_s"]),
        ("energized / total servers", f"{s['energized_servers']} / {s['total_servers']}"),
        ("peak inlet (°C)", s["peak_inlet_c"]),
        ("peak utilization", ", ".join(f"{k} {v:.2f}" for k, v in
                                       s["peak_utilization"].items())),
        ("simulated / wall (s)", f"{s['sim_seconds']} / {s['wall_seconds']}"),
    ]
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in facts)
    colour = "#1a7f37" if s["ok"] else "#b42318"
    plots = "".join(f'<h3>{html.escape(title)}</h3><img src="{name}" alt="{html.escape(title)}">'
                    for name, title in (("load_vs_limit.png", "load against limit per level"),
                                        ("inlet.png", "inlet temperatures"),
                                        ("servers.png", "energized servers"),
                                        ("sources.png", "sources and UPSs")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>rampguard dry run: {html.escape(str(s['hall']))} / {html.escape(str(s['strategy']))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
.verdict {{ font-size: 1.3em; font-weight: bold; color: {colour}; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>rampguard dry run</h1>
<p class="verdict">{html.escape(verdict)}</p>
<table>{fact_rows}</table>
<h2>Trips</h2>
{_table(s['trips'], ['t_s', 'node', 'node_kind', 'cause', 'detail'], s['trips_total'])}
<h2>Violations</h2>
{_table(s['violations'], ['t_s', 'node', 'node_kind', 'kind', 'duration_s', 'peak', 'limit',
                          'unit', 'detail'], s['violations_total'])}
<h2>Faults</h2>
{_table(s['fault_effects'], ['kind', 't_s', 'inlet_above_allowable_after_s',
                             'gpu_slowdown_after_s', 'gpu_shutdown_after_s', 'trips_after'],
        len(s['fault_effects']))}
<h2>Events</h2>
{_table(s['events'], ['t_s', 'kind', 'detail'], len(s['events']))}
<h2>Plots</h2>
{plots}
</body></html>
"""
