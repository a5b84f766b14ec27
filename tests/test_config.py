"""SearchConfig: presets, TOML + overrides precedence, validation, round trip."""

import pytest

from dcpnas.config import BUDGETS, SearchConfig
from dcpnas.errors import ConfigError


def test_defaults_and_budget_presets():
    c = SearchConfig.load()
    assert c.budget == "default" and c.mode == "dcp" and c.curvature == "ggn" and c.decoupled
    smoke = SearchConfig.load(overrides={"budget": "smoke"})
    for k, v in BUDGETS["smoke"].items():
        assert getattr(smoke, k) == v
    assert smoke.space().input_shape == (1, 8, 8)
    assert c.space((1, 28, 28), 10).input_shape == (1, c.image_size, c.image_size)


def test_toml_then_overrides_win(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[search]\nbudget = "smoke"\nlam = 0.01\nepochs = 3\nmode = "cp"\n')
    c = SearchConfig.load(p, {"epochs": 5, "seed": None, "decoupled": False})
    assert (c.budget, c.lam, c.epochs, c.mode, c.decoupled) == ("smoke", 0.01, 5, "cp", False)
    assert c.channels == BUDGETS["smoke"]["channels"]  # from the preset the file chose
    assert c.effective_lambda == 0.0  # cp = no tangent propagation


def test_round_trip_through_written_toml(tmp_path):
    c = SearchConfig.load(overrides={"target": "arm-a72", "latency_ms": 3.5, "latency_form": "add", "lam": 0.0})
    c.save(tmp_path / "config.toml")
    again = SearchConfig.load(tmp_path / "config.toml")
    assert again.to_dict() == c.to_dict()


@pytest.mark.parametrize("overrides, match", [
    ({"mode": "greedy"}, "mode"),
    ({"curvature": "kfac"}, "curvature"),
    ({"latency_form": "pow"}, "latency_form"),
    ({"budget": "huge"}, "budget"),
    ({"epochs": 0}, "epochs"),
    ({"lam": -1.0}, "lam"),
    ({"epochs": 1.5}, "epochs"),
    ({"latency_ms": 0.0}, "latency_ms"),
    ({"image_size": 10}, "image_size"),
    ({"colour": "red"}, "unknown key"),
    ({"primitives": ["none", "conv_7x7"]}, "primitives"),
    ({"primitives": ["none"]}, "primitives"),
    ({"primitives": ["skip_connect", "skip_connect"]}, "primitives"),
    ({"primitives": "skip_connect"}, "list of names"),
    ({"steps": 0}, "steps"),
    ({"steps": 9}, "steps"),
])
def test_bad_values_raise_one_line_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        SearchConfig.load(overrides=overrides)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        SearchConfig.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SearchConfig.load(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("epoch = 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        SearchConfig.load(typo)


@pytest.mark.parametrize("cells", [1, 2])
def test_a_search_needs_a_normal_and_two_reduction_cells(cells):
    # with fewer cells alpha_reduce (or alpha_normal) takes no part in the forward pass, and the architecture
    # gradient was a raw RuntimeError from autograd deep inside the search
    with pytest.raises(ConfigError, match="cells must be >= 3"):
        SearchConfig(cells=cells)


def test_primitives_and_steps_are_keys_that_shape_the_space(tmp_path):
    """A search over a subset of the ops and fewer nodes per cell, from a TOML file, round trip included."""
    p = tmp_path / "s.toml"
    p.write_text('[search]\nprimitives = ["none", "max_pool_3x3", "sep_conv_3x3"]\nsteps = 2\n')
    c = SearchConfig.load(p)
    assert c.primitives == ("none", "max_pool_3x3", "sep_conv_3x3") and c.steps == 2
    space = c.space()
    assert space.primitives == c.primitives and space.steps == 2 and space.edges == 5
    c.save(tmp_path / "again.toml")
    assert SearchConfig.load(tmp_path / "again.toml").to_dict() == c.to_dict()
    assert SearchConfig().space().primitives == SearchConfig().primitives and SearchConfig().space().steps == 4
