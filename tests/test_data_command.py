"""``sibnet data summary`` and ``sibnet data check`` on small folders."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sibnet.cli import main


def _folder(tmp_path, broken=False):
    root = tmp_path / "ds"
    root.mkdir()
    for i in range(4):
        Image.fromarray(np.full((10, 10), 40 * i, np.uint8)).save(root / f"{i}.png")
    m = np.zeros((10, 10), np.uint8)
    m[2:6, 3:8] = 1
    Image.fromarray(m).save(root / "m.png")
    rows = ["0.png,m.png,1,0,p0", "1.png,,0,1,p1", "2.png,,1,1,p2", "3.png,,0,0,p3"]
    if broken:
        (root / "2.png").write_bytes(b"garbage")
        rows.append("9.png,,1,0,p9")
    (root / "l.csv").write_text("path,mask,a,b,patient\n" + "\n".join(rows) + "\n")
    return root


def test_summary_prints_counts_and_draws_grid(tmp_path, capsys):
    root = _folder(tmp_path)
    grid = tmp_path / "out" / "grid.png"
    assert main(["data", "summary", "csv", "--root", str(root / "l.csv"), "--grid", str(grid),
                 "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "train: 4 images, 4 patients" in out
    assert ([line.split() for line in out.splitlines() if line.strip().startswith(("a ", "b "))]
            == [["a", "2"], ["b", "2"]])
    assert Image.open(grid).size[0] > 100
    assert sorted(p.name for p in root.iterdir()) == ["0.png", "1.png", "2.png", "3.png", "l.csv", "m.png"]


def test_check_lists_each_problem_and_exits_1(tmp_path, capsys):
    root = _folder(tmp_path, broken=True)
    assert main(["data", "check", "csv", "--root", str(root / "l.csv"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out
    assert "l.csv line 6, column 'path': image" in out and "9.png not found" in out
    assert "2.png: unreadable image" in out


def test_check_clean_folder_exits_0(tmp_path, capsys):
    root = _folder(tmp_path)
    assert main(["data", "check", "csv", "--root", str(root / "l.csv"), "--quiet"]) == 0
    assert "no problems" in capsys.readouterr().out


def test_bad_option_is_one_line_error(tmp_path, capsys):
    root = _folder(tmp_path)
    assert main(["data", "summary", "csv", "--root", str(root / "l.csv"), "--option", "colour=red"]) == 2
    assert "unknown option 'colour'" in capsys.readouterr().err
