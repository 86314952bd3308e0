"""The HTML report is self-contained and complete; figures show the data they are given."""

from __future__ import annotations

import base64
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from sibnet.errors import DataError, SibnetError
from sibnet.report.figures import case_figure, read_metrics_csv, training_curves
from sibnet.report.html import Figure, Section, Table, fmt, write_report


def _fig():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    return fig


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.imgs, self.links, self.h2 = [], [], [], []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("a", "link", "script", "iframe"):
            self.links.append(a.get("href") or a.get("src") or "")
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data


def test_report_is_self_contained_and_has_every_section(tmp_path):
    from sibnet.report.html import figure_png

    png = figure_png(_fig())
    sections = [
        Section("Setup <1>", ["First paragraph with <script>alert(1)</script>.\n\nSecond paragraph.",
                              ["item a", "item b"]]),
        Section("Metrics", [Table(["label", "AUROC"], [["Edema", 0.81234], ["mean", None]], caption="cap")]),
        Section("Curves", [_fig(), Figure(png, caption="a figure")]),
    ]
    path = write_report(tmp_path / "sub" / "report.html", sections, title="T")
    text = path.read_text()
    plain = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(?i)(https?:|ftp:|//[a-z]|\burl\(|@import)", plain)
    p = _Collect()
    p.feed(text)
    p.close()
    assert p.stack == []
    assert p.h2 == ["Setup <1>", "Metrics", "Curves"]
    assert all(link.startswith("#") for link in p.links)  # only the in-page table of contents
    assert len(p.imgs) == 2
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<td>0.812</td>" in text and "<td>–</td>" in text
    assert text.count("<p>") == 2 and "<li>item b</li>" in text


def test_table_and_block_errors(tmp_path):
    with pytest.raises(SibnetError, match="2 columns"):
        write_report(tmp_path / "r.html", [Section("s", [Table(["a", "b"], [[1]])])])
    with pytest.raises(SibnetError, match="not PNG"):
        write_report(tmp_path / "r.html", [Section("s", [Figure(b"GIF89a")])])
    with pytest.raises(SibnetError, match="block of type int"):
        write_report(tmp_path / "r.html", [Section("s", [3])])
    with pytest.raises(SibnetError, match="Section"):
        write_report(tmp_path / "r.html", ["not a section"])
    assert not (tmp_path / "r.html").exists()


def test_fmt():
    assert fmt(0.12345) == "0.123" and fmt(0.12345, 1) == "0.1"
    assert fmt(None) == fmt(math.nan) == "–"
    assert fmt(math.inf) == "∞" and fmt(7) == "7" and fmt(True) == "yes"


def test_training_curves_plot_the_csv_values(tmp_path):
    from sibnet.training.logs import write_metrics_csv

    rows = [{"epoch": e, "step": 3 * e, "lr": 1e-3, "train_total": 2.0 / e, "train_wce": 1.0 / e, "train_cd": 0.5,
             "train_sc": 0.1, "val_auroc": 0.5 + 0.1 * e, "best_val_auroc": 0.5 + 0.1 * e, "seconds": 1.0}
            for e in (1, 2, 3)]
    write_metrics_csv(tmp_path / "a.csv", rows)
    write_metrics_csv(tmp_path / "b.csv", [dict(r, val_auroc=float("nan")) for r in rows[:2]])
    fig = training_curves({"baseline": tmp_path / "a.csv", "SIBNet": tmp_path / "b.csv"})
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["training loss (total)", "training loss (weighted BCE/CE)",
                                               "validation mean AUROC"]
    total = {ln.get_label(): ln.get_ydata() for ln in axes[0].get_lines()}
    np.testing.assert_allclose(total["baseline"], [2.0, 1.0, 2.0 / 3], rtol=1e-5)
    np.testing.assert_allclose(total["SIBNet"], [2.0, 1.0], rtol=1e-5)
    auroc = {ln.get_label(): ln.get_ydata() for ln in axes[2].get_lines()}
    assert list(auroc) == ["baseline"]  # a run with no validation values draws no line
    np.testing.assert_allclose(auroc["baseline"], [0.6, 0.7, 0.8], rtol=1e-5)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_metrics_csv_errors_name_file_row_column(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_metrics_csv(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,val_auroc\n1,0.5\n2,abc\n")
    with pytest.raises(DataError, match=r"bad.csv: row 3, column 'val_auroc'"):
        read_metrics_csv(bad)
    (tmp_path / "noepoch.csv").write_text("a\n1\n")
    with pytest.raises(DataError, match="epoch"):
        read_metrics_csv(tmp_path / "noepoch.csv")


def test_case_figure_contours_only_for_present_classes_and_shared_scale():
    import matplotlib.pyplot as plt

    h = w = 16
    image = np.random.default_rng(0).random((1, h, w))
    mask = np.zeros((3, h, w))
    mask[0, 2:6, 2:6] = 1
    mask[2, 8:12, 8:12] = 1
    label = np.array([1, 0, 0])  # class 2 has a mask drawn but is absent: no contour in its panel
    maps_a = np.zeros((3, h, w))
    maps_a[0, 3, 3] = 2.0
    maps_b = np.full((3, h, w), -1.0)  # negative everywhere: blank after ReLU
    fig = case_figure(image, mask, label, {"A": (maps_a, [0.9, 0.1, 0.2]), "B": (maps_b, [0.3, 0.4, 0.5])},
                      ["c0", "c1", "c2"], title="t")
    axes = np.array(fig.axes).reshape(2, 4)
    assert axes[0, 1].get_title() == "c0 (present)\np = 0.90"
    assert axes[1, 3].get_title() == "c2 (absent)\np = 0.50"
    assert axes[0, 0].get_ylabel() == "A" and axes[1, 0].get_ylabel() == "B"
    assert len(axes[0, 0].collections) == 2  # image panel: every nonempty mask
    assert len(axes[0, 1].collections) == 1 and len(axes[0, 3].collections) == 0
    heat_a = axes[0, 1].get_images()[1].get_array()
    heat_b = axes[1, 1].get_images()[1].get_array()
    assert float(heat_a.max()) == 1.0 and float(heat_b.max()) == 0.0
    plt.close(fig)
    marks = np.zeros((h, w), dtype=bool)
    marks[0, :5] = True
    fig = case_figure(image, mask, label, {"A": (maps_a, [0.9, 0.1, 0.2])}, ["c0", "c1", "c2"], marks=marks)
    shade = fig.axes[0].get_images()[1].get_array()  # the marks, shaded over the image of the first panel
    assert np.array_equal(shade[..., 3] > 0, marks) and fig.axes[0].get_title().endswith("+ marks")
    plt.close(fig)
    with pytest.raises(DataError, match="2 class names for 3 maps"):
        case_figure(image, mask, label, {"A": (maps_a, [0, 0, 0])}, ["c0", "c1"])
