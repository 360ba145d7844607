"""One YAML loader for every hand-edited config: training, station, andon rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from zerodefect.edge.config import StationConfigError, load_station_config
from zerodefect.quality.andon import load_config as load_andon_config
from zerodefect.training.config import ConfigError, load_config

LOADERS = [
    (load_config, ConfigError),
    (load_station_config, StationConfigError),
    (load_andon_config, ValueError),
]


@pytest.mark.parametrize(("load", "error"), LOADERS)
def test_a_config_that_is_not_a_mapping_or_not_yaml_is_refused_naming_the_file(
    tmp_path: Path, load, error
) -> None:
    listed = tmp_path / "listed.yaml"
    listed.write_text("- station: st-01\n")
    with pytest.raises(error, match=r"listed\.yaml: .*expected a mapping of settings, found a list"):
        load(listed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("station: [st-01\n")
    with pytest.raises(error, match=r"broken\.yaml: .*not valid YAML"):
        load(broken)
