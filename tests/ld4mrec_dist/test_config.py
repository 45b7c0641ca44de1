"""The typed config: defaults, YAML and override precedence, round trips, one-line errors."""

import pytest

from ld4mrec_dist.config import Config, ConfigError, config_from_dict, config_to_dict, config_to_yaml, load_config


def test_defaults_are_the_papers_where_it_gives_a_value():
    cfg = load_config()
    assert (cfg.diffusion.noise_scale, cfg.diffusion.alpha_min) == (0.01, 0.05)  # Eq. 3, §4.4.2
    assert (cfg.diffusion.sr_prob, cfg.diffusion.sr_gamma) == (0.01, 0.01)  # Eq. 12, §4.4.1
    assert (cfg.diffusion.history, cfg.model.svd_rank) == (10, 64)
    assert (cfg.train.patience, cfg.train.epochs) == (10, 1000)  # paper: 20; 10 kept the best epoch (docs/design.md)
    assert cfg.eval.ks == [10, 20] and cfg.eval.select_metric == "recall@20"


def test_overrides_beat_yaml_which_beats_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.005\n  batch_size: 64\nmodel:\n  ablation: no_bg\n")
    cfg = load_config(path, ["train.lr=0.0001", "diffusion.steps=1"])
    assert cfg.train.lr == 0.0001  # override over YAML
    assert cfg.train.batch_size == 64 and cfg.model.ablation == "no_bg"  # YAML over default
    assert cfg.diffusion.steps == 1 and cfg.train.seed == Config().train.seed


def test_dict_and_yaml_round_trips_are_exact(tmp_path):
    cfg = load_config(None, ["model.modalities=[image]", "eval.ks=[5,50]", "eval.select_metric=ndcg@50"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = tmp_path / "saved.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("overrides, names", [
    (["train.lr"], "train.lr=0.001"),  # no '=': the message shows the form to write
    (["train.no_such_field=1"], "no_such_field"),
    (["train.batch_size=many"], "batch_size"),
    (["diffusion.noise_scale=1.5"], "diffusion.noise_scale"),
    (["model.hidden=7"], "model.hidden"),
    (["model.ablation=no_everything"], "model.ablation"),
    (["eval.select_metric=recall@50"], "eval.select_metric"),
    (["scaling.num_workers=-1"], "scaling.num_workers"),
    (["scaling.num_workers=3", "scaling.item_group=2"], "scaling.item_group=2 must divide scaling.num_workers=3"),
    (["scaling.item_group=-1"], "scaling.item_group"),
])
def test_bad_values_are_one_line_errors_naming_the_field(overrides, names):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert names in message and "\n" not in message


def test_an_unknown_key_names_the_nearest_key_as_the_user_writes_it(tmp_path):
    hint = "(python jobs/train.py --help lists every key)"
    for override, want in [("train.lrr=1", "'train.lrr'; did you mean train.lr?"),
                           ("trian.lr=1", "'trian.lr'; did you mean train.lr?"),
                           ("bogus=1", "'bogus' (python")]:
        with pytest.raises(ConfigError) as err:
            load_config(None, [override])
        assert str(err.value).startswith(f"unknown configuration key {want}") and str(err.value).endswith(hint)
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  hiden: 64\n")
    with pytest.raises(ConfigError, match=f"'model.hiden' in {path}; did you mean model.hidden\\?"):
        load_config(path)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_config_object_can_be_the_base_of_overrides_and_is_left_unchanged():
    from ld4mrec_dist.config import load_config

    base = load_config(None, ["train.epochs=7"])
    cfg = load_config(base, ["train.lr=0.5"])
    assert (cfg.train.epochs, cfg.train.lr) == (7, 0.5)
    assert base.train.lr == 0.001 and cfg is not base
