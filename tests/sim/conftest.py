"""Fixtures for the simulator tests: the reference configs and the small purpose-built halls of
tests/data/sim_halls."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import load_hall_config
from controller.model import HallConfig
from controller.topology import Topology, compile_hall

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

HALLS = Path(__file__).resolve().parents[1] / "data" / "sim_halls"


def hall_path(name: str) -> Path:
    """A purpose-built hall: ``inrush`` (PHYSICS check 10), ``cascade`` (2N at 70 % per side),
    ``cooling`` (PHYSICS check 13)."""
    return HALLS / f"{name}.toml"


@pytest.fixture(scope="session")
def rig_config() -> HallConfig:
    return load_hall_config(CONFIGS / "rig.toml")


@pytest.fixture(scope="session")
def demo_config() -> HallConfig:
    return load_hall_config(CONFIGS / "demo-hall.toml")


@pytest.fixture(scope="session")
def demo_topo(demo_config: HallConfig) -> Topology:
    return compile_hall(demo_config)


@pytest.fixture(scope="session")
def inrush_config() -> HallConfig:
    return load_hall_config(hall_path("inrush"))


@pytest.fixture(scope="session")
def cascade_config() -> HallConfig:
    return load_hall_config(hall_path("cascade"))


@pytest.fixture(scope="session")
def cooling_config() -> HallConfig:
    return load_hall_config(hall_path("cooling"))
