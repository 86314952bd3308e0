"""Figures of the experiment tables (matplotlib, Agg): box plots, per-label bars, curves, heatmap.

* Fig. 3 style :func:`box_plot`: one box per method of a per-run score (e.g. mean AUROC over the
  labels), with every run drawn as a dot.
* Fig. 5 style :func:`per_label_bars`: grouped bars, mean over runs per (label, method), error
  bars = sd over runs (ddof = 1).
* Fig. 4 style :func:`curves`: per-epoch mean over runs of each method (thin lines: single runs).
* Fig. 9 / noise plots :func:`lines`: one line per method over an x value (sigma, epoch).
Every function returns a Figure; :func:`sibnet.report.figures.save_figure` writes it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..report.figures import pyplot, save_figure


def box_plot(values: Mapping[str, Sequence[float]], ylabel: str, title: str = ""):
    plt = pyplot()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(names)), 3.6))
    data = [np.asarray([v for v in values[n] if v is not None and np.isfinite(v)], float) for n in names]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    for i, d in enumerate(data, start=1):
        ax.plot(np.full(d.size, i) + np.linspace(-0.08, 0.08, d.size) if d.size > 1 else np.full(d.size, i), d,
                "o", ms=3, color="k", alpha=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def per_label_bars(table: Mapping[str, Mapping[str, Sequence[float]]], labels: Sequence[str], ylabel: str,
                   title: str = ""):
    """``table[method][label]`` = per-run values."""
    plt = pyplot()
    methods = list(table)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels) * max(1, len(methods)) / 2), 3.6))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(labels))
    for i, m in enumerate(methods):
        means, sds = [], []
        for lab in labels:
            v = np.asarray([a for a in table[m].get(lab, []) if a is not None and np.isfinite(a)], float)
            means.append(v.mean() if v.size else np.nan)
            sds.append(v.std(ddof=1) if v.size > 1 else 0.0)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=sds, capsize=2, label=m)
    ax.set_xticks(x, labels)
    ax.tick_params(axis="x", rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def curves(runs: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]], xlabel: str, ylabel: str,
           title: str = "", ax=None):
    """``runs[method]`` = list of (x, y) per run; mean over runs per x drawn thick."""
    plt = pyplot()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, (m, rs) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        acc: dict[float, list[float]] = {}
        for xs, ys in rs:
            ax.plot(xs, ys, color=colour, lw=0.6, alpha=0.35)
            for a, b in zip(xs, ys):
                if np.isfinite(b):
                    acc.setdefault(float(a), []).append(float(b))
        if acc:
            xs = sorted(acc)
            ax.plot(xs, [np.mean(acc[a]) for a in xs], color=colour, lw=2, marker="o", ms=3, label=m)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


def two_panel_curves(left: Mapping, right: Mapping, xlabel: str, ylabels: tuple[str, str], title: str = ""):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    curves(left, xlabel, ylabels[0], ax=axes[0])
    curves(right, xlabel, ylabels[1], ax=axes[1])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def lines(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
          title: str = "", logx: bool = False):
    """``series[method]`` = (x, mean, sd); sd drawn as error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for m, (x, mean, sd) in series.items():
        ax.errorbar(x, mean, yerr=sd, marker="o", ms=3, capsize=2, label=m)
    if logx:
        ax.set_xscale("symlog", linthresh=0.005)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def heatmap(values: np.ndarray, xticks: Sequence, yticks: Sequence, xlabel: str, ylabel: str, title: str = ""):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    im = ax.imshow(values, origin="lower", cmap="viridis")
    ax.set_xticks(range(len(xticks)), [str(x) for x in xticks])
    ax.set_yticks(range(len(yticks)), [str(y) for y in yticks])
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


__all__ = ["box_plot", "curves", "heatmap", "lines", "per_label_bars", "save_figure", "two_panel_curves"]
