"""TOML configuration: defaults, overrides, relative paths, and errors naming the file."""

from pathlib import Path

import pytest

from core.config import WorkbenchConfig, load_config
from core.errors import WorkbenchError


def test_defaults_without_a_file():
    config = load_config(None)
    assert config == WorkbenchConfig()
    assert config.data.train_fraction == 0.75 and config.featurizer.backbone == "efficientnet_lite0"


def test_values_and_relative_root(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data]\nroot = "photos"\ntrain_fraction = 0.8\nseed = 3\n[featurizer]\nbatch_size = 8\n')
    config = load_config(path)
    assert config.data.root == tmp_path / "photos"
    assert (config.data.train_fraction, config.data.seed, config.featurizer.batch_size) == (0.8, 3, 8)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[data\n", "invalid TOML"),
        ("[model]\n", "unknown table"),
        ("[data]\nseed = 'x'\n", "seed must be int"),
        ("[featurizer]\nbatch = 4\n", "unknown setting"),
    ],
)
def test_bad_config_names_the_file(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(WorkbenchError, match=f"bad.toml.*{message}"):
        load_config(path)
    with pytest.raises(WorkbenchError, match="cannot read config"):
        load_config(Path(tmp_path / "absent.toml"))
