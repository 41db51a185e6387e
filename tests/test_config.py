import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf, open_dict

import src.training.run as train_module
from src.config import (
    ConfigError,
    config_errors,
    device_count,
    known_keys,
    per_device_batch_size,
    trainer_arguments,
    validate,
)
from src.training.run import train
from tests.conftest import DATA_DIR, ROOT, compose_train

GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "tools")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model or tokenizer fails the test: validation must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(train_module, "load_tokenizer", forbidden)
    monkeypatch.setattr(train_module.DocEncoder, "from_pretrained", forbidden)


# (overrides, what the message must contain: the key first)
BAD_CONFIGS = [
    # ranges and registered names
    ("activation=log9", "activation: 'log9': N logs must be <= 4"),
    ("activation=log-1", "activation: 'log-1': N logs must be >= 0"),
    ("activation=log0", "activation: 'log0': N = 0 logs is plain relu, registered as 'relu'"),
    ("activation=gelu", "activation: 'gelu': not a known activation; known: log1, log2, log3, log4, relu"),
    ("mask.t=-5", "mask.t: must be a number >= 0 or null, got -5"),
    ("mask.schedule=cosine", "mask.schedule: must be one of constant, linear"),
    ("reg.lambda_d=-0.1", "reg.lambda_d: must be a number >= 0, got -0.1"),
    ("reg.T=0", "reg.T: must be an integer >= 1, got 0"),
    ("data.group_size=1", "data.group_size: must be an integer >= 2, got 1"),
    ("optim.lr=0", "optim.lr: must be a number > 0, got 0"),
    ("posthoc.start_weight=1.5", "posthoc.start_weight: must be a number >= 0 and <= 1, got 1.5"),
    ("posthoc.prune_ratio=1", "posthoc.prune_ratio: must be a number >= 0 and < 1, got 1"),
    ("optim.weight_decay=-0.01", "optim.weight_decay: must be a number >= 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps: must be an integer >= 0"),
    ("optim.warmup_steps=300", "optim.warmup_steps: must be < trainer.max_steps (300), got 300"),
    ("trainer.max_steps=0", "trainer.max_steps: must be an integer >= 1, got 0"),
    ("data.batch_size=0", "data.batch_size: must be an integer >= 1"),
    ("data.batch_size=null", "data.batch_size: must be an integer >= 1 (null only with data.global_batch_size"),
    ("eval.max_length=0", "eval.max_length: must be an integer >= 1"),
    ("model.max_length=4", "model.max_length: must be an integer >= 8, got 4"),
    ("data.max_queries=0", "data.max_queries: must be an integer >= 1 or null, got 0"),
    ("loss.name=mse", "loss.name: must be one of kl, margin_mse"),
    ("trainer.devices=0", "trainer.devices: must be an integer >= 1, -1 (all), 'auto'"),
    ("data.teachers=[{kind:llm}]", "data.teachers[0].kind: must be one of"),
    # wrong types: booleans are not numbers, floats are not integers
    ("mask.t=abc", "mask.t: must be a number >= 0 or null, got 'abc' (str)"),
    ("mask.t=true", "mask.t: must be a number >= 0 or null, got True (bool)"),
    ("reg.lambda_d=[1]", "reg.lambda_d: must be a number >= 0, got [1] (list)"),
    ("trainer.max_steps=1.5", "trainer.max_steps: must be an integer >= 1, got 1.5 (float)"),
    ("reg.T=1e4", "reg.T: must be an integer >= 1, got 10000.0 (float)"),
    ("seed=abc", "seed: must be an integer >= 0 and <= 4294967295, got 'abc' (str)"),
    ("data.bucket_by_length=maybe", "data.bucket_by_length: must be true or false, got 'maybe' (str)"),
    ("reg.term_weights=tf", "reg.term_weights: must be one of null, idf, query_frequency, got 'tf'"),
    ("data.datasets=scifact", "data.datasets: must be a list of names such as [scifact, nfcorpus], got 'scifact'"),
    ("+data.teacher_scores.weights={bm25:yes}", "data.teacher_scores.weights.bm25: must be a number >= 0"),
    # unknown keys (+key passes Hydra; a key that is not there otherwise fails in Hydra itself)
    ("+data.bach_size=8", "data.bach_size: unknown key (did you mean data.batch_size?)"),
    ("+foo=1", "foo: unknown key"),
    ("+mask.tt=5", "mask.tt: unknown key (did you mean mask.t?)"),
    ("+trainer.max_step=3", "trainer.max_step: unknown key: not an argument of lightning.Trainer (did you mean"),
    ("+trainer.logger=false", "trainer.logger: set by src.train"),
    # batches split across devices
    (
        "+data.global_batch_size=320 trainer.devices=8",
        "data.global_batch_size: 320 != data.batch_size (8) x trainer.devices (8) x trainer.num_nodes (1) x "
        "trainer.accumulate_grad_batches (1) = 64",
    ),
    ("+data.global_batch_size=320 trainer.devices=3 data.batch_size=null", "data.global_batch_size: 320 is not div"),
    ("+data.global_batch_size=32 trainer.devices=auto", "trainer.devices: data.global_batch_size=32 needs a fixed"),
    # paths
    ("model.name_or_path=./no/such/model", "model.name_or_path: ./no/such/model: no such folder"),
    ("paths.data_dir=/no/such/folder", "/no/such/folder/scifact/corpus.jsonl does not exist"),
    ("data.prepared=/no/such/set", "data.prepared: /no/such/set has no manifest.json"),
    ("data.teacher_scores.normalize=zscore", "data.teacher_scores.normalize: must be one of minmax, query, none"),
    ("loss.student_scale=-1", "loss.student_scale: must be fit or a number > 0, got -1"),
    ("loss.student_scale=auto", "loss.student_scale: must be fit or a number > 0, got 'auto'"),
    ("data.negatives_from=dense", "data.negatives_from: must be one of bm25, teachers, student, got 'dense'"),
    ("eval.dev_split=[dev]", "eval.dev_split: must be a string or null"),
    ("query.idf=/no/such/idf.json", "query.idf: /no/such/idf.json does not exist"),
    ("data.datasets=[no_such_set]", "data.datasets: 'no_such_set' is not a BEIR dataset and not found under"),
    ("eval.datasets=[fiqa]", "eval.datasets / paths.data_dir: 'fiqa' is a BEIR dataset but"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS)
def test_bad_config_fails_before_any_model_is_loaded(overrides, message, tmp_path, no_model_loading):
    cfg = compose_train(*overrides.split(), f"paths.output_dir={tmp_path}", "data.download=false")
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(cfg)


def test_every_problem_is_reported_at_once_one_line_each_key_first():
    with pytest.raises(ConfigError) as err:
        validate(compose_train("mask.t=-5", "reg.T=0", "+data.bach_size=8"))
    lines = str(err.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["data.bach_size", "mask.t", "reg.T"]


def test_hydra_itself_rejects_a_key_the_config_lacks():
    with pytest.raises(Exception, match="Could not override 'foo'") as err:
        compose_train("foo=1")
    assert "Key 'foo' is not in struct" in str(err.value.__cause__)


def test_a_typo_in_an_experiment_file_is_an_unknown_key(tmp_path):
    """Hydra merges an experiment file's keys without asking whether they exist: validate() does."""
    from hydra import compose, initialize_config_dir

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf, symlinks=True)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\nmask:\n  t: 50\nreg:\n  lambda: 0.1\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=typo"])
    assert config_errors(cfg) == ["reg.lambda: unknown key (did you mean reg.lambda_d?)"]


def test_free_form_places_take_any_key():
    cfg = compose_train(
        "+logger.tags=[a,b]", "+data.teacher_scores.weights={bm25: 2, splade-tiny: 1}", "+trainer.benchmark=false"
    )
    with open_dict(cfg):
        cfg.data.teachers[1]["k1"] = 0.9  # a kind's own option
    assert config_errors(cfg) == []


def test_mask_T_follows_reg_T_and_is_reported_there_only():
    with pytest.raises(ConfigError) as err:
        validate(compose_train("reg.T=0"))
    assert str(err.value) == "reg.T: must be an integer >= 1, got 0"


def test_a_beir_dataset_missing_offline_says_the_download_is_off(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_train("eval.datasets=[fiqa]", f"paths.output_dir={tmp_path}", "data.download=true")
    with pytest.raises(ConfigError, match="'fiqa' is a BEIR dataset .* HF_HUB_OFFLINE=1 prevents its download"):
        validate(cfg)
    with pytest.raises(ConfigError, match="on disk under .*: nfcorpus, scifact"):
        validate(cfg)


@pytest.mark.parametrize(
    ("devices", "count"),
    [(1, 1), (8, 8), (-1, None), ("auto", None), ("-1", None), ("2", 2), ("0,1", 2), ("1,", 1), ([0, 3], 2)],
)
def test_device_count_reads_lightnings_forms(devices, count):
    assert device_count(devices) == count


@pytest.mark.parametrize("devices", [0, -2, True, "two", [], ["0"], 1.5])
def test_device_count_refuses_what_lightning_refuses(devices):
    with pytest.raises(ConfigError, match="trainer.devices"):
        device_count(devices)


def test_global_batch_is_split_over_devices_nodes_and_accumulation():
    cfg = compose_train(
        "+data.global_batch_size=320",
        "data.batch_size=null",
        "trainer.devices=4",
        "+trainer.accumulate_grad_batches=2",
    )
    assert config_errors(cfg) == []
    assert per_device_batch_size(cfg) == 40
    cfg = compose_train("+data.global_batch_size=320", "data.batch_size=40", "trainer.devices=[0,1,2,3,4,5,6,7]")
    assert config_errors(cfg) == [] and per_device_batch_size(cfg) == 40
    assert per_device_batch_size(compose_train()) == 8  # no global batch: data.batch_size as it is


def test_command_line_knobs_land_where_the_design_says():
    cfg = compose_train("activation=log2", "mask.t=200", "reg.lambda_d=0.04", "reg.T=10000", "seed=3")
    assert (cfg.activation, cfg.mask.t, cfg.reg.lambda_d, cfg.reg.T, cfg.seed) == ("log2", 200, 0.04, 10000, 3)
    assert compose_train("mask.t=null").mask.t is None


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_group_option_composes_and_validates(group, option, tmp_path):
    """Every option of every group under conf/ (experiments included) against the schema and the checks."""
    cfg = compose_train(f"{group}={option}", f"paths.output_dir={tmp_path}", f"paths.data_dir={DATA_DIR}")
    if option.startswith("paper_"):  # needs the hub and BEIR-13: schema, types and ranges here, the rest where it runs
        assert config_errors(cfg) == []
    else:
        validate(cfg)


def test_the_schema_covers_every_composed_key():
    """known_keys() reads the YAML files instead of composing them: it must know what composition makes."""
    known = known_keys()
    for group, option in OPTIONS:
        tree = OmegaConf.to_container(compose_train(f"{group}={option}"), resolve=False)
        stack = [("", tree)]
        while stack:
            prefix, node = stack.pop()
            for key, value in node.items():
                path = f"{prefix}{key}"
                assert path in known or path.startswith("trainer."), f"{group}={option}: {path}"
                if isinstance(value, dict) and path != "data.teacher_scores.weights":
                    stack.append((f"{path}.", value))


def test_validate_takes_well_under_a_second():
    import lightning  # noqa: F401  (src.train has imported it before it validates)

    cfg = compose_train()
    known_keys.cache_clear()
    trainer_arguments.cache_clear()
    start = time.perf_counter()
    validate(cfg)
    assert time.perf_counter() - start < 0.5


def test_the_command_line_fails_fast_naming_the_key(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}
    env["DATA_DIR"] = str(DATA_DIR)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "src.train", "mask.t=-5", f"paths.output_dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    wall = time.perf_counter() - start
    print(f"python -m src.train mask.t=-5: exit {done.returncode} after {wall:.1f} s")
    assert done.returncode != 0
    assert "mask.t: must be a number >= 0 or null, got -5" in done.stderr
    assert wall < 20


def test_debug_smoke_limits():
    cfg = compose_train("debug=smoke")
    assert cfg.trainer.max_steps <= 20
    assert (cfg.eval.max_queries, cfg.eval.max_docs) == (50, 1000)


@pytest.mark.parametrize(
    ("overrides", "posthoc"),
    [
        ((), (0.5, 0.2)),  # the default: averaged with the start, pruned
        (("experiment=l0_mask",), (0.5, 0.2)),  # the table's default row
        (("posthoc=none",), (0.0, 0.0)),
        (("experiment=no_reg",), (0.0, 0.0)),
        (("experiment=l0_mask_log2_high_t50",), (0.0, 0.0)),  # through l0_mask_high_t50 -> l0_mask_high_t100
        (("experiment=flops_baseline_high",), (0.0, 0.0)),
        (("experiment=paper_l0_mask_log2",), (0.0, 0.0)),
        (("experiment=no_reg", "posthoc.prune_ratio=0.3"), (0.0, 0.3)),
    ],
)
def test_posthoc_default_and_the_rows_exported_as_trained(overrides, posthoc):
    cfg = compose_train(*overrides)
    assert (cfg.posthoc.start_weight, cfg.posthoc.prune_ratio) == posthoc


@pytest.mark.parametrize("experiment", ["paper_l0_mask", "paper_l0_mask_log2", "paper_flops_baseline"])
def test_paper_experiments_resolve_to_design_md(experiment):
    """DESIGN.md's paper-scale hyperparameters (the authors' released config)."""
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.model.name_or_path == "distilbert-base-uncased" and cfg.model.max_length == 256
    assert (cfg.reg.lambda_d, cfg.reg.T, cfg.reg.schedule) == (0.04, 10000, "quadratic")
    assert cfg.mask.t == (None if experiment == "paper_flops_baseline" else 200)
    assert cfg.activation == ("log2" if experiment.endswith("log2") else "log1")
    assert (cfg.data.batch_size, cfg.trainer.devices, cfg.data.global_batch_size, cfg.data.group_size) == (
        40,
        8,
        320,
        2,
    )
    assert (cfg.trainer.max_steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (
        100000,
        2e-5,
        6000,
        0.01,
    )
    assert cfg.trainer.precision == "16-mixed" and cfg.trainer.strategy == "ddp" and cfg.loss.name == "kl"
    assert cfg.data.msmarco.format == "hard_negatives" and cfg.data.datasets == []
    assert len(cfg.eval.datasets) == 13 and {"scifact", "nfcorpus", "quora", "arguana"} <= set(cfg.eval.datasets)
