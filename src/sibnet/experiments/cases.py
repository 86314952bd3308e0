"""Figures of typical cases: every method's maps of the same evaluation images, beside the expert mask.

* Models: the finished jobs of one fold and seed (``--case-job FOLD,SEED``, default the first of
  each), each at its evaluated checkpoint, never retrained.
* Cases: the first ``per_class`` images of the evaluation split in which each class is present, in
  the split's own order (no selection by any score, so the cases are not chosen to favour a method);
  an image counts once. Where a dataset has images with no class present, the first such image too.
* Maps: one saliency method for every model (table 3's ``--saliency`` and ``--saliency-option``),
  one colour scale per case; lime: the expert mask contours; magenta (datasets with burned-in marks,
  BUSI): the marks region of :func:`sibnet.evaluation.marks.marks_region`; on synthetic data drawn with
  the shortcut glyph, the glyph's box on the images that carry it.
* Written: ``case_<id>.png`` per case and ``cases.md`` listing them under the command.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, SibnetError
from ..evaluation.marks import marks_region
from ..evaluation.run import compute_maps, glyph_of, glyph_region, probabilities
from ..files import atomic_write_text
from ..report.figures import case_figure
from ..saliency import describe
from .agreement import has_marks
from .evaluate import eval_dataset, load_job_model
from .figures import save_figure
from .methods import Method
from .store import collect
from .study import Job, Study, job_config


def case_indices(labels: np.ndarray, per_class: int) -> list[int]:
    """The first ``per_class`` rows of ``labels`` (N, K) with each class present (1), each row once, then
    the first row with no class present (if any); in order of first choice."""
    if per_class < 1:
        raise ConfigError(f"--cases: must be >= 1, got {per_class}")
    labels = np.asarray(labels)
    chosen: list[int] = []
    for k in range(labels.shape[1]):
        rows = [int(i) for i in np.flatnonzero(labels[:, k] == 1) if int(i) not in chosen]
        chosen += rows[:per_class]
    empty = [int(i) for i in np.flatnonzero(~(labels == 1).any(axis=1)) if int(i) not in chosen]
    return chosen + empty[:1]


def parse_case_job(text: str | None, study: Study) -> tuple[int, int]:
    """``--case-job FOLD,SEED`` (default the study's first fold and seed), checked against the study."""
    if not text:
        return 0, study.seeds[0]
    m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", text)
    if m is None or int(m.group(1)) >= study.folds or int(m.group(2)) not in study.seeds:
        raise ConfigError(f"--case-job {text!r}: expected FOLD,SEED with FOLD < --folds ({study.folds}) and SEED "
                          f"one of {list(study.seeds)}")
    return int(m.group(1)), int(m.group(2))


def write_cases(study: Study, methods: list[Method], jobs: list[Job], out: Path, command: str, method: str,
                per_class: int, case_job: tuple[int, int], options: dict | None = None) -> dict:
    """Write one figure per case and ``cases.md`` to ``out``; returns the paths (markdown, figures)."""
    fold, seed = case_job
    wanted = [Job(m.name, fold, seed) for m in methods]
    finished = collect(study, [j for j in jobs if j in wanted])
    missing = [j.key for j in wanted if j not in finished]
    if missing:
        raise SibnetError(f"cases: these jobs are not finished: {', '.join(missing)} (run table1 first)")
    cfg = job_config(study, wanted[0])
    dataset, split = eval_dataset(study, cfg)
    labels = getattr(dataset, "labels", None)  # file-based datasets hold them; others are read item by item
    if labels is None:
        labels = np.stack([np.asarray(dataset[i]["label"]) for i in range(len(dataset))])
    indices = case_indices(labels, per_class)
    per_method = {}
    names: list[str] = []
    for job in wanted:
        model, meta = load_job_model(study, job, job_config(study, job))
        names = list(meta["class_names"])
        maps = compute_maps(model, dataset, method, indices, **(options or {}))
        probs = probabilities(torch.as_tensor(maps["logits"]), meta["task"]).numpy()
        per_method[job.method] = (maps, probs)
    first = next(iter(per_method.values()))[0]
    marks = has_marks(dataset)
    shortcut = glyph_of(dataset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures, lines = [], []
    for n, i in enumerate(indices):
        item = dataset[i]
        ident = str(item.get("id", i))
        image = first["images"][n]
        mask = first["masks"][n] if first["masks"] is not None else np.zeros_like(first["maps"][n])
        region = None
        if marks:
            region = marks_region(image)
        elif shortcut and dataset.marker[i]:
            region = glyph_region(dataset.info.extra["marker_box"], image.shape[-2:])
        fig = case_figure(image, mask, first["labels"][n],
                          {name: (m["maps"][n], p[n]) for name, (m, p) in per_method.items()}, names,
                          title=f"{study.dataset} {split} image {ident} (fold {fold}, seed {seed})",
                          marks=region, marks_name="glyph" if shortcut else "marks")
        path = save_figure(fig, out / f"case_{_slug(ident)}.png")
        figures.append(str(path))
        present = ", ".join(c for c, v in zip(names, first["labels"][n]) if v == 1) or "none"
        glyph = (", with the glyph" if dataset.marker[i] else ", no glyph") if shortcut else ""
        lines.append(f"- `{path.name}`: {ident} (present: {present}{glyph})")
    md = out / "cases.md"
    atomic_write_text(md, "\n".join([
        "# Typical cases", "", f"command: `{command}`", "",
        f"Rows: the evaluated model of each method's fold-{fold} seed-{seed} job; columns: the image "
        f"(lime: expert mask contours{'; magenta: burned-in marks' if marks else ''}"
        f"{f'; magenta: the {shortcut} shortcut glyph, where the image carries it' if shortcut else ''}), then "
        "each class's "
        f"{describe(method, options)} map (positive part, one colour scale per case; the class's mask contour "
        f"where the class is present). Cases: the first {per_class} {split} image(s) with each class present, in "
        "the split's order (not chosen by any score).", "", *lines, ""]), what="cases")
    return {"markdown": str(md), "csv": "", "figures": figures}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "case"


__all__ = ["case_indices", "parse_case_job", "write_cases"]
