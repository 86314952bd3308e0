"""``sibnet demo --quick`` end to end: two runs, one self-contained report whose tables hold the numbers."""

from __future__ import annotations

import base64
import json
import re

import pytest

from sibnet.cli import main


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    rc = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_quick_demo_writes_runs_and_a_complete_report(quick_demo, capsys):
    out = quick_demo
    for run in ("baseline", "sibnet"):
        assert (out / run / "best.pt").is_file() and (out / run / "metrics.csv").is_file()
    html = (out / "report.html").read_text()
    for title in ("What was run", "Classification on the test split", "Saliency agreement with the expert masks",
                  "Training curves", "Saliency on test cases", "Files and commands"):
        assert f">{title}</h2>" in html
    plain = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"(?i)(https?:|//[a-z]|<script|<link)", plain)
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    res = json.loads((out / "results.json").read_text())
    assert len(imgs) == 1 + len(res["cases"]) >= 2  # curves + one figure per case
    assert all(base64.b64decode(s).startswith(b"\x89PNG") for s in imgs)
    assert "32x32" in html and "gradcam" in html and "1 epoch(s)" in html  # the loss's default maps


def test_report_tables_show_the_evaluated_numbers(quick_demo):
    from sklearn.metrics import roc_auc_score  # noqa: F401  (values themselves are checked in test_evaluate_cmd)

    res = json.loads((quick_demo / "results.json").read_text())
    html = (quick_demo / "report.html").read_text()
    for model in ("baseline", "SIBNet"):
        mean = res["classification"][model]["mean"]
        if mean["auroc"] is not None:
            lo, hi = mean["auroc_ci"]
            cell = f"{mean['auroc']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")
            assert f"<td>{cell}</td>" in html
        rows = res["agreement"][model]
        assert rows[-1]["class"] == "mean"
    # same data and seed for both runs: the same test labels, so the same positives per label
    base, sib = res["classification"]["baseline"], res["classification"]["SIBNet"]
    assert {k: v["n_pos"] for k, v in base["per_label"].items()} == {k: v["n_pos"] for k, v in sib["per_label"].items()}
    from sibnet.losses.sibnet_loss import DEFAULT_LAMBDAS

    assert res["training"]["SIBNet"]["lambda_cd"] == DEFAULT_LAMBDAS["gradcam"][0]
    assert res["training"]["baseline"]["lambda_cd"] is None and res["training"]["SIBNet"]["balance"] == "gradient"
    assert (quick_demo / "figures" / "training_curves.png").is_file()


@pytest.mark.parametrize("args, needle", [(["--epochs", "0"], "--epochs"), (["--method", "nope"], "nope"),
                                          (["--image-size", "8"], "--image-size")])
def test_demo_bad_arguments_exit_2(tmp_path, capsys, args, needle):
    rc = main(["demo", "--out", str(tmp_path / "d")] + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "d").exists()
