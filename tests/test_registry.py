"""One method registry: the training config, the CLI, the engine and the network builder all
offer exactly the names of :data:`wsi_lpd.train.registry.METHODS`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wsi_lpd.cli.app import app
from wsi_lpd.errors import ConfigError
from wsi_lpd.networks.build import MODEL_BUILDERS
from wsi_lpd.settings import read_yaml
from wsi_lpd.train.methods.base import Method
from wsi_lpd.train.registry import METHODS, make_method, method_names, training_config_from_mapping

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
TINY = CONFIGS / "lpd_tiny_test.yaml"


def test_config_cli_engine_and_builder_offer_the_same_methods(tmp_path: Path) -> None:
    names = set(METHODS)
    assert names == {"lpd", "cam", "pbip", "hisynseg"}
    assert set(method_names()) == names
    # every method has its network (inference rebuilds it from the checkpoint by name)
    assert names <= set(MODEL_BUILDERS)
    for name, spec in METHODS.items():
        assert spec.model is MODEL_BUILDERS[name]
        assert issubclass(spec.method, Method)
    # the config's allowed values: the error lists exactly the registry's names
    with pytest.raises(ConfigError, match=r"model\.method: expected one of ([\w, ]+) \(got") as e:
        training_config_from_mapping(read_yaml(TINY), method="nope")
    listed = re.search(r"expected one of ([\w, ]+) \(got", str(e.value))
    assert listed is not None and set(listed.group(1).split(", ")) == names
    # the CLI's choices: refused before any file is read, with the registry's names
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "m"), "--method", "nope"])
    assert result.exit_code == 1  # the CLI's one error line
    offered = re.search(r"'nope' is not one of ([\w, ]+)", result.output.replace("\n", " "))
    assert offered is not None, result.output
    assert set(re.sub(r"\s+", "", offered.group(1)).split(",")) == names
    assert not (tmp_path / "m").exists()


def test_engine_builds_every_registered_method_from_its_config() -> None:
    from wsi_lpd.classes import ClassList

    classes = ClassList.from_names(["A", "B"])
    for name, spec in METHODS.items():
        if spec.config.__name__ == "HisynSegTrainingConfig":
            raw = yaml.safe_load((CONFIGS / "hisynseg_tiny_test.yaml").read_text())
        else:
            raw = yaml.safe_load(TINY.read_text())
            raw["model"]["head"].pop("prototypes_per_class")  # each method's default K
        config = training_config_from_mapping(raw, method=name)
        assert isinstance(config, spec.config) and config.method == name
        method = make_method(config, classes)
        assert isinstance(method, spec.method)
