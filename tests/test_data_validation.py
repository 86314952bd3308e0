"""Every bad-input rule: the error is a DataError whose message names the file, row or column."""

from __future__ import annotations

import builtins
import gzip
import shutil

import numpy as np
import pytest
from PIL import Image

from sibnet.data import CSVDataset, GlaS, NIHChestXray
from sibnet.data.imageio import read_image
from sibnet.errors import DataError


def _png(path, size=(12, 10), value=100, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size[::-1] if mode == "L" else (*size[::-1], 3)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def _csv(path, text):
    path.write_text(text)
    return path


def test_missing_image_names_row_and_file(tmp_path):
    _png(tmp_path / "a.png")
    _csv(tmp_path / "d.csv", "path,x\na.png,1\nb.png,0\n")
    with pytest.raises(DataError, match=r"d\.csv line 3, column 'path': image .*b\.png not found"):
        CSVDataset(tmp_path / "d.csv")


def test_unreadable_image_names_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not an image")
    _csv(tmp_path / "d.csv", "path,x\nbad.png,1\n")
    with pytest.raises(DataError, match=r"bad\.png: unreadable image"):
        CSVDataset(tmp_path / "d.csv", channels=1)[0]


def test_truncated_image_names_file(tmp_path):
    src = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(src)
    data = src.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: truncated image"):
        read_image(tmp_path / "cut.png")
    _csv(tmp_path / "d.csv", "path,x\ncut.png,1\n")
    with pytest.raises(DataError, match=r"cut\.png: truncated image"):
        CSVDataset(tmp_path / "d.csv", channels=1)[0]


def test_unknown_label_value_names_row_and_column(tmp_path):
    _png(tmp_path / "a.png")
    _csv(tmp_path / "d.csv", "path,Edema,Effusion\na.png,1,0\na.png,0,yes\n")
    with pytest.raises(DataError, match=r"d\.csv line 3, column 'Effusion': unknown label value 'yes'"):
        CSVDataset(tmp_path / "d.csv")


def test_unknown_multiclass_value_names_row_and_column(tmp_path):
    _png(tmp_path / "a.png")
    _csv(tmp_path / "d.csv", "path,grade\na.png,benign\na.png,unsure\n")
    with pytest.raises(DataError, match=r"line 3, column 'grade': unknown label value 'unsure'"):
        CSVDataset(tmp_path / "d.csv", task="multiclass", class_names=("benign", "malignant"))


def test_missing_column_names_column(tmp_path):
    _csv(tmp_path / "d.csv", "file,x\na.png,1\n")
    with pytest.raises(DataError, match=r"d\.csv: missing column 'path'"):
        CSVDataset(tmp_path / "d.csv")


def test_empty_split_names_split(tmp_path):
    _png(tmp_path / "a.png")
    _csv(tmp_path / "d.csv", "path,x,split,patient\na.png,1,train,p1\n")
    with pytest.raises(DataError, match=r"d\.csv: split 'test' has no images"):
        CSVDataset(tmp_path / "d.csv", split="test")


def test_mask_image_size_mismatch_names_both_files(tmp_path):
    _png(tmp_path / "a.png", size=(12, 10))
    _png(tmp_path / "a_mask.png", size=(12, 11), value=1)
    _csv(tmp_path / "d.csv", "path,mask,x\na.png,a_mask.png,1\n")
    ds = CSVDataset(tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"a_mask\.png: mask is 12x11 .* image .*a\.png is 12x10"):
        ds[0]


def test_duplicate_patient_across_splits_names_patient_and_splits(tmp_path):
    _png(tmp_path / "a.png")
    _csv(tmp_path / "d.csv", "path,x,split,patient\na.png,1,train,p1\na.png,0,test,p2\na.png,0,val,p1\n")
    with pytest.raises(DataError, match=r"column 'split': patient 'p1' appears in both the 'train' and the 'val'"):
        CSVDataset(tmp_path / "d.csv")


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "x.dcm").write_bytes(b"\0" * 200)
    real_import = builtins.__import__

    def no_pydicom(name, *a, **k):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError("No module named 'pydicom'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    with pytest.raises(DataError, match=r"x\.dcm: reading DICOM needs pydicom.*pip install sibnet\[dicom\]"):
        read_image(tmp_path / "x.dcm")


# ---- the same rules in the dataset-specific loaders ------------------------------------------------

def _glas(tmp_path, grade_rows, files):
    root = tmp_path / "glas"
    root.mkdir()
    (root / "Grade.csv").write_bytes(("name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\r"
                                      + "\r".join(grade_rows) + "\r").encode())
    for name, size in files.items():
        _png(root / name, size=size, mode="RGB" if "anno" not in name else "L", value=1)
    return root


def test_glas_unknown_grade_names_line_and_column(tmp_path):
    root = _glas(tmp_path, ["train_1,1, benign, healthy", "train_2,1, dubious, healthy"],
                 {"train_1.bmp": (8, 6), "train_1_anno.bmp": (8, 6), "train_2.bmp": (8, 6), "train_2_anno.bmp": (8, 6)})
    with pytest.raises(DataError, match=r"Grade\.csv line 3, column ' grade \(GlaS\)': unknown label value 'dubious'"):
        GlaS(root)


def test_glas_missing_image_and_column(tmp_path):
    root = _glas(tmp_path, ["train_1,1, benign, healthy"], {"train_1_anno.bmp": (8, 6)})
    with pytest.raises(DataError, match=r"Grade\.csv line 2: image .*train_1\.bmp \(or \.png\) not found"):
        GlaS(root)
    (root / "Grade.csv").write_text("name,patient ID\rtrain_1,1\r")
    with pytest.raises(DataError, match=r"Grade\.csv: missing column 'grade \(GlaS\)'"):
        GlaS(root)


def test_glas_bmp_layout_and_mask_size_mismatch(tmp_path):
    root = _glas(tmp_path, ["train_1,1, malignant, x", "testA_1,2, benign, y"],
                 {"train_1.bmp": (8, 6), "train_1_anno.bmp": (8, 6), "testA_1.bmp": (8, 6), "testA_1_anno.bmp": (9, 6)})
    ds = GlaS(root, image_size=(6, 8))
    assert ds.labels.tolist() == [[0, 1]] and ds[0]["mask"].shape == (1, 6, 8)
    with pytest.raises(DataError, match=r"testA_1_anno\.bmp: mask is 9x6"):
        GlaS(root, split="testA")[0]
    with pytest.raises(DataError, match=r"split 'testB' has no images"):
        GlaS(root, split="testB")


def _nih(tmp_path, rows, images=("00000001_000.png",), lists=None):
    root = tmp_path / "nih"
    for name in images:
        _png(root / "images" / name, size=(16, 16))
    (root / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n" + "".join(r + "\n" for r in rows))
    if lists:
        (root / "train_val_list.txt").write_text("\n".join(lists[0]) + "\n")
        (root / "test_list.txt").write_text("\n".join(lists[1]) + "\n")
    return root


def test_nih_unknown_finding_names_line_and_column(tmp_path):
    root = _nih(tmp_path, ["00000001_000.png,Cardiomegaly|Heartache,0,1,50,M,PA,2048,2048,0.14,0.14"])
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv line 2, column 'Finding Labels': unknown label value "
                                        r"'Heartache'"):
        NIHChestXray(root)


def test_nih_missing_column_and_duplicate_patient(tmp_path):
    root = _nih(tmp_path, ["00000001_000.png,Edema,0,1,50,M,PA,2048,2048,0.14,0.14",
                           "00000001_001.png,Edema,1,1,51,M,PA,2048,2048,0.14,0.14"],
                images=("00000001_000.png", "00000001_001.png"),
                lists=(["00000001_000.png"], ["00000001_001.png"]))
    with pytest.raises(DataError, match=r"patient '1' appears in both the 'train' and the 'test' split"):
        NIHChestXray(root)
    text = (root / "Data_Entry_2017.csv").read_text().replace("Patient ID", "Patient")
    (root / "Data_Entry_2017.csv").write_text(text)
    with pytest.raises(DataError, match=r"missing column 'Patient ID'"):
        NIHChestXray(root)


def test_nih_gz_entries_and_rows_without_image_are_skipped(tmp_path):
    root = _nih(tmp_path, ["00000001_000.png,No Finding,0,1,50,M,PA,2048,2048,0.14,0.14",
                           "00000002_000.png,Edema,0,2,50,M,PA,2048,2048,0.14,0.14"])
    meta = root / "metadata"
    meta.mkdir()
    with open(root / "Data_Entry_2017.csv", "rb") as src, gzip.open(meta / "Data_Entry_2017_v2020.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (root / "Data_Entry_2017.csv").unlink()
    ds = NIHChestXray(root, image_size=8)
    assert ds.ids == ["00000001_000.png"] and ds.info.extra["rows_without_image"] == 1
    assert ds.labels.sum() == 0
