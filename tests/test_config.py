import pytest

from factlearn.config import Config, load_config
from factlearn.errors import UserError


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 3, lr: 1e-3}\nmethod: {name: mas, lam: 2}\n")
    cfg = load_config(path, {"method.lam": 5.0, "train.epochs": None})
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3  # None override leaves the file's value
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML reads "1e-3" as text; coerced to float
    assert cfg.method.lam == 5.0 and cfg.method.name == "mas"
    assert cfg.model.slot_dim == 64


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train: {epoch: 3}\n", "train.epoch"),
        ("train: {epochs: three}\n", "train.epochs"),
        ("train: {epochs: true}\n", "train.epochs"),
        ("model: {backbone: vgg}\n", "model.backbone"),
        ("bogus: 1\n", "bogus"),
        ("train: [1, 2]\n", "train"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment):
        load_config(path)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_retired_key_is_dropped_with_a_warning_and_old_runs_still_load(caplog):
    from factlearn.config import Config, from_dict

    with caplog.at_level("WARNING", logger="factlearn.config"):
        cfg = from_dict(Config, {"train": {"num_workers": 4, "epochs": 2}})
    assert cfg.train.epochs == 2 and not hasattr(cfg.train, "num_workers")
    assert "train.num_workers is no longer used" in caplog.text
    with pytest.raises(UserError, match="unknown key 'train.num_worker'"):
        from_dict(Config, {"train": {"num_worker": 4}})
