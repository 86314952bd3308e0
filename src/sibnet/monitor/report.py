"""The HTML page of a ``sibnet monitor check``: reference vs new score histograms, batch alarms,
and the most suspicious images with their class maps (built on :mod:`sibnet.report.html`)."""

from __future__ import annotations

import numpy as np

from ..report.figures import pyplot
from ..report.html import Section, Table
from .scores import SCORES

LABELS = {"cd": "class distinctiveness (mean cosine of the class maps' embeddings)",
          "sc": "spatial incoherence (mean squared difference per same-cluster pixel pair)",
          "cd+sc": "cd + sc (standardised sum)", "msp": "-max class probability", "energy": "energy",
          "mahalanobis": "Mahalanobis distance² (penultimate features)"}


def histograms(reference: dict, new: dict, primary: str):
    """One panel per score: the reference (calibration) scores vs the new images' scores."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4), squeeze=False)
    for ax, k in zip(axes.ravel(), SCORES):
        ref, s = np.asarray(reference[k]), np.asarray(new[k])
        both = np.r_[ref, s]
        lo, hi = np.percentile(both, [0.5, 99.5])
        if not hi > lo:
            lo, hi = both.min() - 0.5, both.max() + 0.5
        bins = np.linspace(lo, hi, 31)
        ax.hist(np.clip(ref, lo, hi), bins=bins, density=True, alpha=0.55, color="tab:blue",
                label=f"reference (n={len(ref)})")
        ax.hist(np.clip(s, lo, hi), bins=bins, density=True, alpha=0.55, color="tab:red",
                label=f"new (n={len(s)})")
        ax.set_title(("★ " if k == primary else "") + k, fontsize=10)
        ax.set_xlabel(LABELS[k].split(" (")[0] + " → more suspicious", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("Scores of the new images against the reference (calibration) images; values beyond the "
                 "0.5-99.5 percentiles are drawn at the edge", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def check_sections(summary: dict, rows: list[dict], reference: dict, new: dict, suspicious_figures: list,
                   per_score: dict) -> list[Section]:
    """The sections of the report (see :func:`sibnet.report.html.render_html`)."""
    primary, alpha = summary["score"], summary["alpha"]
    n_alarm = sum(b["alarm"] for b in summary["batches"])
    intro = (f"{summary['n_images']} images of {summary['data']} scored by {summary['checkpoint']} "
             f"({summary['method']} maps) against its reference profile ({summary['n_reference']} calibration "
             f"images). Batches of {summary['batch_size']} images in order are tested with a one-sided "
             f"Mann-Whitney U test of their {primary} scores against the reference at false-alarm rate "
             f"alpha = {alpha}: {n_alarm} of {len(summary['batches'])} batches raise an alarm. All images together: "
             f"p = {summary['overall']['p_value']:.3g} ({'ALARM' if summary['overall']['alarm'] else 'no alarm'}). "
             f"{summary['n_flagged']} images have a conformal p-value <= alpha on {primary} "
             f"(expected about {alpha * summary['n_images']:.0f} on in-distribution data).")
    score_rows = []
    for k in SCORES:
        ref, s = np.asarray(reference[k]), np.asarray(new[k])
        t = per_score[k]
        score_rows.append([("★ " if k == primary else "") + k, float(np.median(ref)), float(np.median(s)),
                           f"{t['p_value']:.3g}", bool(t["alarm"]),
                           float(np.mean(np.asarray(rows_p(rows, k)) <= alpha))])
    sections = [
        Section("Verdict", [intro, Table(["score", "reference median", "new median", "test p (all images)",
                                          "alarm", "share of images p <= alpha"], score_rows, digits=4,
                                         caption="Every score's test of all new images against the reference; "
                                                 "the verdict uses the starred score.")]),
        Section("Score distributions", [histograms(reference, new, primary)]),
        Section("Batches", [Table(["batch", "first image", "last image", "n", "p-value", "alarm"],
                                  [[b["batch"], b["first"], b["last"], b["n"], f"{b['p_value']:.3g}", b["alarm"]]
                                   for b in summary["batches"]], digits=4)]),
    ]
    if suspicious_figures:
        sections.append(Section(f"The {len(suspicious_figures)} most suspicious images ({primary})",
                                ["Each image with the model's class maps (one colour scale per image) and "
                                 "the predicted probabilities."] + suspicious_figures))
    return sections


def rows_p(rows: list[dict], k: str) -> list[float]:
    return [r[f"p:{k}"] for r in rows]


__all__ = ["check_sections", "histograms"]
