"""Image formats of the generic CSV loader, MedMNIST flavours, resizing and augmentation conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sibnet.data import CSVDataset, LightAugment, MedMNIST, build_dataset
from sibnet.data.nih import box_mask
from sibnet.data.transforms import resize_image, resize_labels
from sibnet.errors import ConfigError, DataError


def _write_dicom(path, pixels, bits_stored=12, photometric="MONOCHROME2"):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_csv_reads_grey_rgb_16bit_jpeg_and_dicom(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    dcm = rng.integers(0, 4096, (8, 8), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(deep).save(tmp_path / "d.png")
    Image.fromarray(grey).save(tmp_path / "j.jpg", quality=100)
    _write_dicom(tmp_path / "m.dcm", dcm)
    _write_dicom(tmp_path / "inv.dcm", dcm, photometric="MONOCHROME1")
    (tmp_path / "l.csv").write_text("path,patient,x\n" + "".join(
        f"{n},{n},1\n" for n in ("g.png", "c.png", "d.png", "j.jpg", "m.dcm", "inv.dcm")))
    ds = CSVDataset(tmp_path / "l.csv", image_size=8)  # channels from the first image: grey
    assert ds.info.in_channels == 1
    img = {r.id: ds[i]["image"][0].numpy() for i, r in enumerate(ds.records)}
    np.testing.assert_array_equal(img["g.png"], grey / np.float32(255))
    luma = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    np.testing.assert_array_equal(img["c.png"], luma / np.float32(255))
    np.testing.assert_allclose(img["d.png"], deep / 65535.0, atol=5e-4)  # float16 storage
    assert np.abs(img["j.jpg"] - grey / 255.0).max() < 0.05  # lossy
    np.testing.assert_allclose(img["m.dcm"], dcm / 4095.0, atol=5e-4)
    np.testing.assert_allclose(img["inv.dcm"], 1 - dcm / 4095.0, atol=5e-4)
    rgb_ds = CSVDataset(tmp_path / "l.csv", image_size=8, channels=3)
    np.testing.assert_array_equal(rgb_ds[1]["image"].numpy(), np.moveaxis(rgb, -1, 0) / np.float32(255))
    np.testing.assert_array_equal(rgb_ds[0]["image"].numpy(), np.stack([grey] * 3) / np.float32(255))


def test_csv_multiclass_masks_and_patients(tmp_path):
    for n in range(3):
        Image.fromarray(np.full((6, 6), 50, np.uint8)).save(tmp_path / f"{n}.png")
    m = np.zeros((6, 6), np.uint8)
    m[1:3, 2:5] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    (tmp_path / "l.csv").write_text("path,mask,patient,label\n0.png,m.png,A,2\n1.png,,B,10\n2.png,m.png,A,2\n")
    ds = CSVDataset(tmp_path / "l.csv", task="multiclass", mask_mode="class", image_size=6)
    assert ds.info.class_names == ("2", "10") and ds.info.task == "multiclass"
    assert ds.labels.tolist() == [[1, 0], [0, 1], [1, 0]] and ds.patients == ["A", "B", "A"]
    np.testing.assert_array_equal(ds[0]["mask"][0].numpy(), m > 0)
    assert ds[0]["mask"][1].sum() == 0 and ds[1]["mask"].sum() == 0  # blank mask cell: empty mask
    with pytest.raises(DataError, match="split 'val' needs a 'split' column"):
        build_dataset("csv", root=tmp_path / "l.csv", split="val", task="multiclass", image_size=6)
    tr = build_dataset("csv", root=tmp_path / "l.csv", split="train", fold=0, folds=2, task="multiclass", image_size=6)
    va = build_dataset("csv", root=tmp_path / "l.csv", split="val", fold=0, folds=2, task="multiclass", image_size=6)
    assert sorted(tr.patients + va.patients) == ["A", "A", "B"] and not set(tr.patients) & set(va.patients)


def test_medmnist_multilabel_rgb_inferred(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 14), dtype=np.uint8)
    np.savez(tmp_path / "chestmnist_64.npz", **arrays)
    ds = MedMNIST(tmp_path, split="test", image_size=28)
    assert ds.info.task == "multilabel" and ds.info.num_classes == 14 and ds.info.in_channels == 3
    assert ds.info.class_names[2] == "effusion" and ds.info.extra["flag"] == "chestmnist"
    np.testing.assert_array_equal(ds[1]["image"].numpy(),
                                  np.moveaxis(arrays["test_images"][1], -1, 0) / np.float32(255))
    np.testing.assert_array_equal(ds.labels, arrays["test_labels"])
    assert len(MedMNIST(tmp_path / "chestmnist_64.npz", split="all", image_size=8)) == 10
    with pytest.raises(ConfigError, match="unknown option 'flavour'"):
        build_dataset("medmnist", root=tmp_path, flavour=1)


def test_resize_matches_pillow_bilinear_and_masks_use_nearest():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    ours = resize_image(img[..., None], 255.0, (20, 15))[0].astype(int)
    ref = np.asarray(Image.fromarray(img).resize((15, 20), Image.BILINEAR)).astype(int)
    assert np.abs(ours - ref).max() <= 1  # torch's antialiased bilinear follows Pillow's filter
    labels = np.arange(64, dtype=np.int32).reshape(8, 8)
    np.testing.assert_array_equal(resize_labels(labels, 4), labels[1::2, 1::2])  # pixel centres 2i + 1
    np.testing.assert_array_equal(resize_labels(labels, 16), np.repeat(np.repeat(labels, 2, 0), 2, 1))


def test_box_mask_scaling_hand_computed():
    m = box_mask([("Edema", 256.0, 512.0, 256.0, 128.0), ("Mass", 0, 0, 1024, 1024)], ("Edema", "Nodule"), (128, 128))
    expect = np.zeros((128, 128), np.float32)
    expect[64:80, 32:64] = 1
    np.testing.assert_array_equal(m[0], expect)
    assert m[1].sum() == 0  # finding not in the label set


def test_light_augment_is_seeded_and_keeps_masks_binary():
    img = torch.rand(1, 32, 32)
    mask = torch.zeros(2, 32, 32)
    mask[0, 8:20, 10:22] = 1
    inst = (mask[0] * 3).to(torch.int64)
    item = {"image": img, "mask": mask, "instances": inst, "label": torch.ones(2)}
    a, b = LightAugment(5)(item), LightAugment(5)(item)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["image"].shape == img.shape and 0 <= a["image"].min() and a["image"].max() <= 1
    assert set(a["mask"].unique().tolist()) <= {0.0, 1.0} and set(a["instances"].unique().tolist()) <= {0, 3}
    assert a["instances"].dtype == torch.int64 and not torch.equal(a["image"], img)
    assert torch.equal((a["instances"] > 0).float(), a["mask"][0])  # same geometric draw
    c = LightAugment(6)(item)
    assert not torch.equal(a["image"], c["image"])


def test_medmnist_empty_split_is_an_error_naming_it(tmp_path):
    arrays = {f"{s}_images": np.zeros((n, 28, 28), np.uint8) for s, n in (("train", 2), ("val", 0), ("test", 1))}
    arrays |= {f"{s}_labels": np.zeros((n, 1), np.uint8) for s, n in (("train", 2), ("val", 0), ("test", 1))}
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError, match="'val' split has no images"):
        MedMNIST(tmp_path / "pneumoniamnist.npz", split="val", image_size=28)
