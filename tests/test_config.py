import pytest

import src.train as train_module
from src.config import ConfigError
from src.train import train
from tests.conftest import ROOT, compose_train


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model or tokenizer fails the test: validation must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(train_module, "load_tokenizer", forbidden)
    monkeypatch.setattr(train_module.DocEncoder, "from_pretrained", forbidden)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("activation=log9", "activation='log9'"),
        ("mask.t=-5", "mask.t"),
        ("reg.lambda_d=-0.1", "reg.lambda_d"),
        ("reg.T=0", "reg.T"),
        ("data.group_size=1", "data.group_size"),
        ("model.name_or_path=./no/such/model", "model.name_or_path"),
        ("paths.data_dir=/no/such/folder", "/no/such/folder/scifact"),
        ("data.prepared=/no/such/set", "data.prepared"),
        ("data.teacher_scores.normalize=zscore", "data.teacher_scores.normalize"),
        ("query.idf=/no/such/idf.json", "query.idf"),
    ],
)
def test_bad_config_fails_before_any_model_is_loaded(override, key, tmp_path, no_model_loading):
    cfg = compose_train(override, f"paths.output_dir={tmp_path}", "data.download=false")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("(", r"\(")):
        train(cfg)


def test_command_line_knobs_land_where_the_design_says():
    cfg = compose_train("activation=log2", "mask.t=200", "reg.lambda_d=0.04", "reg.T=10000", "seed=3")
    assert (cfg.activation, cfg.mask.t, cfg.reg.lambda_d, cfg.reg.T, cfg.seed) == ("log2", 200, 0.04, 10000, 3)
    assert compose_train("mask.t=null").mask.t is None


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_config_composes_and_validates(experiment, tmp_path):
    from src.config import validate

    cfg = compose_train(f"experiment={experiment}", f"paths.output_dir={tmp_path}")
    validate(cfg)


def test_debug_smoke_limits():
    cfg = compose_train("debug=smoke")
    assert cfg.trainer.max_steps <= 20
    assert (cfg.eval.max_queries, cfg.eval.max_docs) == (50, 1000)
