"""Property-based tests (hypothesis): whatever a user feeds the configuration layer and the file
loaders, the outcome is success or a :class:`sibnet.errors.SibnetError` (one line), never another
exception.

* configuration: random dotted keys (real ones and made-up ones), values of every YAML type
  (numbers out of range, nan/inf, strings with odd characters, lists, mappings) through
  ``load_config`` overrides, flag settings and a YAML file;
* ``csv`` dataset: label files with malformed rows (field counts, label values, quotes, empty
  paths, paths to missing files, undecodable bytes) read and their first item loaded;
* images: odd sizes (1 px and up, non-square), modes (1, L, LA, P, RGB, RGBA, I;16, I, F), bit
  depths (1, 8, 16, 32), formats (PNG, TIFF, BMP, JPEG) and truncated files, read with
  ``read_image`` and as items of a ``csv`` dataset.

The default suite runs modest ``max_examples``; the ``slow`` variants run many more.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sibnet.config import Config, load_config  # noqa: E402
from sibnet.errors import SibnetError  # noqa: E402

FAST = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def one_line(exc: SibnetError) -> None:
    assert str(exc).strip() and "\n" not in str(exc).strip(), repr(str(exc))


# ---------------------------------------------------------------- configuration

def _flat(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


REAL_KEYS = _flat(Config().to_dict()) + ["data.options.n", "data.options.seed", "data.options.difficulty",
                                         "unlabeled.options.root", "train.recipe_options.stage1"]
SECTIONS = list(Config().to_dict())

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)
keys = st.one_of(
    st.sampled_from(REAL_KEYS),
    st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(SECTIONS), names),
    st.lists(names, min_size=1, max_size=4).map(".".join),
    texts,
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True), texts,
    st.sampled_from(["auto", "cpu", "cuda:0", "cuda:x", "null", "none", "gradcam", "deep_taylor", "pham", "stop",
                     "skip", "1e-4", "synthetic", "csv", "/nonexistent", "\x00", "a" * 300, "", "~", "-1"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.one_of(names, texts), inner, max_size=3)),
                      max_leaves=6)


def _as_override(key: str, value) -> str:
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        if text.endswith("\n..."):
            text = text[:-4].strip()
    except yaml.YAMLError:
        text = str(value)
    return f"{key}={text}"


PATH_KEYS = ["data.root", "unlabeled.root", "model.pretrained", "out"]
paths = st.one_of(st.sampled_from(["\x00", "a\x00b", "a" * 300, "/".join(["d"] * 3000), "/nonexistent", "", "~", ".",
                                   "/dev/null", "/proc/self/fd/0"]), texts)
overrides = st.lists(st.one_of(st.builds(_as_override, keys, values), texts,
                               st.builds(_as_override, st.sampled_from(PATH_KEYS), paths)), max_size=4)
flag_settings = st.one_of(st.dictionaries(st.sampled_from(REAL_KEYS), values, max_size=3),
                          st.dictionaries(st.sampled_from(PATH_KEYS), paths, max_size=2))
files = st.one_of(st.dictionaries(st.one_of(st.sampled_from(SECTIONS), names), values, max_size=4),
                  values, texts)


def check_config(overrides, settings_, file_content) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if file_content is not None:
            path = Path(tmp) / "cfg.yaml"
            if isinstance(file_content, str):
                path.write_text(file_content, encoding="utf-8", errors="surrogatepass")
            else:
                path.write_text(yaml.safe_dump(file_content))
        try:
            cfg = load_config(path, overrides, settings_)
        except SibnetError as exc:
            one_line(exc)
            return
    assert isinstance(cfg, Config)
    assert cfg.data.image_size >= 1 and cfg.data.batch_size >= 1 and cfg.optim.lr > 0
    assert not set(cfg.data.options) & {"seed", "root", "split", "fold", "folds", "image_size", "size"}
    # a valid configuration survives its own round trip (what config.yaml and checkpoints hold)
    assert load_config(None, [], None, base=cfg.to_dict()) == cfg


config_inputs = dict(overrides=overrides, settings_=flag_settings, file_content=st.one_of(st.none(), files))


@settings(max_examples=300, **FAST)
@given(**config_inputs)
def test_config_layer_accepts_or_refuses_in_one_line(overrides, settings_, file_content):
    check_config(overrides, settings_, file_content)


@pytest.mark.slow
@settings(max_examples=3000, **SLOW)
@given(**config_inputs)
def test_config_layer_accepts_or_refuses_in_one_line_many(overrides, settings_, file_content):
    check_config(overrides, settings_, file_content)


# ---------------------------------------------------------------- images

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F"]
FORMATS = {"PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "JPEG": ".jpg"}


@st.composite
def image_files(draw):
    """(encoded bytes, suffix, mode, (h, w)); sometimes truncated or with bytes flipped."""
    from PIL import Image

    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(list(FORMATS)))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I"):
        hi = draw(st.sampled_from([1, 255, 4095, 65535]))
        img = Image.fromarray(rng.integers(0, hi + 1, (h, w)).astype(np.uint16 if mode == "I;16" else np.int32))
    elif mode == "F":
        img = Image.fromarray(rng.normal(0, draw(st.sampled_from([1e-6, 1.0, 1e6])), (h, w)).astype(np.float32))
    else:
        base = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
        img = base.convert(mode) if mode != "P" else base.convert("RGB").convert("P", palette=Image.ADAPTIVE)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # this format cannot hold this mode
        assume(False)
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "empty"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    elif damage == "empty":
        data = b""
    return data, FORMATS[fmt], mode, (h, w), damage


def check_image(sample, channels, size) -> None:
    from sibnet.data.imageio import read_image

    data, suffix, mode, (h, w), damage = sample
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img{suffix}"
        path.write_bytes(data)
        try:
            arr, hi = read_image(path, channels)
        except SibnetError as exc:
            one_line(exc)
            assert str(exc).startswith(str(path))
            assert damage != "none" or mode in ("I",), f"an undamaged {mode} {suffix} file was refused: {exc}"
            return
        assert arr.ndim == 3 and hi > 0 and (damage != "none" or arr.shape[:2] == (h, w))
        assert channels is None or arr.shape[2] == channels
        # the same file as an item of a csv dataset
        (Path(tmp) / "labels.csv").write_text(f"path,a\nimg{suffix},1\n")
        from sibnet.data.registry import build_dataset

        try:
            ds = build_dataset("csv", root=Path(tmp) / "labels.csv", image_size=size,
                               **({"channels": channels} if channels else {}))
            item = ds[0]
        except SibnetError as exc:
            one_line(exc)
            return
        image = item["image"]
        assert tuple(image.shape[1:]) == (size, size) and image.shape[0] in (1, 3)
        assert bool(np.isfinite(image.numpy()).all())


image_inputs = dict(sample=image_files(), channels=st.sampled_from([None, 1, 3]), size=st.integers(1, 24))


@settings(max_examples=250, **FAST)
@given(**image_inputs)
def test_image_files_read_or_refused_in_one_line(sample, channels, size):
    check_image(sample, channels, size)


@pytest.mark.slow
@settings(max_examples=2000, **SLOW)
@given(**image_inputs)
def test_image_files_read_or_refused_in_one_line_many(sample, channels, size):
    check_image(sample, channels, size)


# ---------------------------------------------------------------- csv label files

cells = st.one_of(st.sampled_from(["", "0", "1", "-1", "1.0", "0.0", "2", "yes", "nan", " 1 ", '"', "a,b", "\t",
                                   "img.png", "missing.png", "/abs/missing.png", "train", "val", "test", "other"]),
                  texts)
csv_rows = st.lists(st.lists(cells, min_size=0, max_size=6), min_size=0, max_size=6)
headers = st.lists(st.one_of(st.sampled_from(["path", "a", "b", "mask", "patient", "split", "id", " path ", ""]),
                             names), min_size=0, max_size=5)


def _csv_text(header, rows) -> str:
    import csv as csvmod

    buf = io.StringIO()
    writer = csvmod.writer(buf)
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


def check_csv(header, rows, raw_tail, task, split, encoding_error) -> None:
    from PIL import Image

    from sibnet.data.registry import build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        Image.fromarray(np.full((6, 7), 128, np.uint8)).save(Path(tmp) / "img.png")
        text = _csv_text(header, rows) + raw_tail
        data = text.encode("utf-8", errors="surrogatepass")
        if encoding_error:
            data += b"\xff\xfe\x80 broken\n"
        (Path(tmp) / "labels.csv").write_bytes(data)
        try:
            ds = build_dataset("csv", root=Path(tmp) / "labels.csv", split=split, image_size=8, task=task)
            if len(ds):
                item = ds[0]
                assert item["image"].shape[1:] == (8, 8)
        except SibnetError as exc:
            one_line(exc)


csv_inputs = dict(header=headers, rows=csv_rows, raw_tail=st.one_of(st.just(""), texts),
                  task=st.sampled_from(["multilabel", "multiclass"]), split=st.sampled_from(["train", "all", "val"]),
                  encoding_error=st.booleans())


@settings(max_examples=300, **FAST)
@given(**csv_inputs)
def test_csv_label_files_load_or_are_refused_in_one_line(header, rows, raw_tail, task, split, encoding_error):
    check_csv(header, rows, raw_tail, task, split, encoding_error)


@pytest.mark.slow
@settings(max_examples=3000, **SLOW)
@given(**csv_inputs)
def test_csv_label_files_load_or_are_refused_in_one_line_many(header, rows, raw_tail, task, split, encoding_error):
    check_csv(header, rows, raw_tail, task, split, encoding_error)


def test_the_properties_can_fail():
    """The checks above reject an outcome that is neither success nor a SibnetError."""
    import sibnet.config as config

    real = config.validate

    def broken(cfg):
        real(cfg)
        if cfg.train.epochs == 7:
            raise KeyError("epochs")

    config.validate = broken
    try:
        with pytest.raises(KeyError):
            check_config(["train.epochs=7"], {}, None)
    finally:
        config.validate = real


def test_a_header_declaring_a_huge_image_is_one_line(tmp_path):
    """Found by the image property: one flipped byte in a BMP header declares 183 million pixels,
    which Pillow refuses with its own DecompressionBombError (not an OSError)."""
    from sibnet.data.imageio import image_size, read_image

    path = tmp_path / "flipped.bmp"
    path.write_bytes(b"BMB\x00\x00\x00\x00\x00\x00\x00>\x00\x00\x00(\x00\x00\x00\x0b\x00\x00\x00\x01\x00\xff\x00"
                     b"\x01\x00\x01\x00\x00\x00\x00\x00\x04\x00\x00\x00\xc4\x0e\x00\x00\xc4\x0e\x00\x00\x02\x00\x00"
                     b"\x00\x02\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\x00z@\x00\x00")
    for read in (read_image, image_size):
        with pytest.raises(SibnetError, match=rf"^{path}: unreadable image \(Image size \(183828491 pixels\)"):
            read(path)
