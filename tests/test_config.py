"""Configuration: YAML + flags + overrides, strict validation, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sibnet.config import Config, diff_configs, load_config, parse_override
from sibnet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_follow_the_paper_and_the_studies():
    """The paper's model and optimiser; the loss's maps and balance as the converged synthetic study chose
    (GradCAM with the gradient-norm balance: docs/results/README.md, README 'The default objective')."""
    cfg = Config()
    assert cfg.model.name == "densenet121" and cfg.loss.saliency == "gradcam" and cfg.loss.balance == "gradient"
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.93, 0.999)
    assert cfg.train.device == "auto" and cfg.data.name == "synthetic"


def test_default_yaml_documents_exactly_the_defaults():
    assert load_config(ROOT / "configs" / "default.yaml") == Config()


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")
                                         if p.stem != "segment"))  # segment.yaml: sibnet segment train's keys
def test_example_configs_load(name, tmp_path):
    """Every configuration shipped in configs/ loads (datasets with files given a root, as --root gives it)."""
    try:
        load_config(ROOT / "configs" / f"{name}.yaml")
    except ConfigError as exc:
        if "needs a path to its files" not in str(exc):
            raise
        load_config(ROOT / "configs" / f"{name}.yaml", [f"data.root={tmp_path}"], {})


def test_layers_file_flags_overrides(tmp_path):
    path = write(tmp_path, "train: {epochs: 7, seed: 3}\ndata: {options: {n: 20, difficulty: 0.2}}\n"
                           "optim: {betas: [0.9, 0.99]}\nloss: {threshold: 0.25}\n")
    cfg = load_config(path, ["train.epochs=2", "data.options.n=8", "loss.saliency=null", "optim.lr=1e-4"],
                      {"train.seed": 5, "train.epochs": 4})
    assert cfg.train.epochs == 2  # override beats flag beats file
    assert cfg.train.seed == 5
    assert cfg.data.options == {"n": 8, "difficulty": 0.2}  # merged, not replaced
    assert cfg.optim.betas == (0.9, 0.99) and isinstance(cfg.optim.betas, tuple)
    assert cfg.optim.lr == 1e-4 and cfg.loss.saliency is None and cfg.loss.threshold == 0.25


def test_int_accepted_for_float_and_none_spelling():
    cfg = load_config(None, ["optim.lr=1", "loss.saliency=none", "train.max_steps=null"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.loss.saliency is None and cfg.train.max_steps is None


@pytest.mark.parametrize("text, message", [
    ("train: {epoch: 3}", "unknown key 'train.epoch' in {path}; keys of 'train' are: epochs, max_steps"),
    ("trian: {epochs: 3}", "unknown key 'trian' in {path}"),
    ("train: {epochs: three}", "train.epochs: expected an integer, got 'three'"),
    ("train: {epochs: 2.5}", "train.epochs: expected an integer, got 2.5"),
    ("train: {deterministic: 1}", "train.deterministic: expected true/false, got 1"),
    ("optim: {betas: [0.9]}", "optim.betas: expected a list of 2 numbers, got [0.9]"),
    ("model: {name: vgg}", "model.name: 'vgg' is not one of 'densenet121'"),
    ("data: {root: /no/such/folder}", "data.root: dataset path not found: /no/such/folder"),
    ("data: {name: nih}", "data.root: dataset 'nih' needs a path"),
    ("train: {epochs: 0}", "train.epochs: must be >= 1, got 0"),
    ("data: {fold: 5}", "data.fold: must be in 0..4"),
    ("model: {pretrained: /no/weights.pth}", "model.pretrained: file not found: /no/weights.pth"),
    ("train: 3", "train: expected a mapping of keys, got 3"),
    ("- a\n- b", "expected a mapping of sections at the top level"),
    ("train: {epochs: [1", "not valid YAML"),
])
def test_bad_file_values(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert message.format(path=path) in msg
    assert "\n" not in msg


@pytest.mark.parametrize("override, message", [
    ("train.epochz=3", "unknown key 'train.epochz' in override 'train.epochz=3'"),
    ("epochs", "expected KEY=VALUE"),
    ("train.epochs=[1", "value is not valid YAML"),
    ("optim.lr=-1", "optim.lr: must be > 0"),
    ("train.device=tpu", "train.device: expected auto, cpu, cuda or cuda:N"),
    ("loss.sc_scale=mean", "loss.sc_scale: 'mean' is not one of 'sum', 'pair_mean'"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_parse_override_and_diff():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("out=runs/x=y") == (["out"], "runs/x=y")
    a, b = Config().to_dict(), load_config(None, ["train.epochs=3", "data.options.n=4"]).to_dict()
    assert diff_configs(a, b) == ["data.options.n", "train.epochs"]


def sibnet(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sibnet", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("case", ["unknown", "type", "path"])
def test_cli_config_errors_exit_2_one_line(tmp_path, case):
    args = {"unknown": ["--config", str(write(tmp_path, "train: {epochs: 1, foo: 2}"))],
            "type": ["train.epochs=many"],
            "path": ["--dataset", "nih", "--root", str(tmp_path / "missing")]}[case]
    res = sibnet("train", "--out", str(tmp_path / "run"), *args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sibnet train: error: "), res.stderr
    assert {"unknown": "unknown key 'train.foo'", "type": "train.epochs: expected an integer",
            "path": "data.root: dataset path not found"}[case] in lines[0]
    assert not (tmp_path / "run").exists()


def test_cli_help_is_complete():
    top = sibnet("--help")
    assert top.returncode == 0 and "train" in top.stdout
    res = sibnet("train", "--help")
    assert res.returncode == 0
    for flag in ("--config", "--dataset", "--root", "--model", "--pretrained", "--saliency", "--lambda-cd",
                 "--lambda-sc", "--epochs", "--max-steps", "--batch-size", "--image-size", "--lr", "--fold",
                 "--patience", "--seed", "--device", "--precision", "--unlabeled", "--resume", "--out",
                 "KEY=VALUE", "torchrun"):
        assert flag in res.stdout, flag


def test_cli_print_config(tmp_path):
    res = sibnet("train", "--print-config", "--saliency", "none", "--epochs", "3", "--unlabeled", "unlabeled",
                 "loss.radius=2")
    assert res.returncode == 0, res.stderr
    import yaml

    data = yaml.safe_load(res.stdout)
    assert data["loss"]["saliency"] is None and data["train"]["epochs"] == 3 and data["loss"]["radius"] == 2
    assert data["unlabeled"]["enabled"] is True


def test_cli_resume_flag_does_not_swallow_an_override():
    from sibnet.cli import build_parser
    from sibnet.commands.train import _settings, resolve
    from sibnet.errors import SibnetError

    args = build_parser().parse_args(["train", "--resume", "train.epochs=3", "out=/nonexistent/run"])
    _settings(args)
    assert args.overrides == ["train.epochs=3", "out=/nonexistent/run"] and args.resume == ""
    with pytest.raises(SibnetError, match="no checkpoint at /nonexistent/run/last.pt"):
        resolve(args)
