"""Shared fixtures for the controller tests: the three reference configs, loaded and compiled."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import load_hall_config
from controller.model import HallConfig
from controller.topology import Topology, compile_hall

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def rig_config() -> HallConfig:
    return load_hall_config(CONFIGS / "rig.toml")


@pytest.fixture(scope="session")
def rig(rig_config: HallConfig) -> Topology:
    return compile_hall(rig_config)


@pytest.fixture(scope="session")
def demo() -> Topology:
    return compile_hall(load_hall_config(CONFIGS / "demo-hall.toml"))


@pytest.fixture(scope="session")
def hall32k() -> Topology:
    return compile_hall(load_hall_config(CONFIGS / "hall-32k.toml"))
