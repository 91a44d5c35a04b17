"""Shared fixtures: one local Ray cluster per test session (starting one takes ~7 s)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Data progress bars are noise in test logs.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

RAY_FIXTURES = {"ray_session"}


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster shared by every integration test of the session (num_cpus=2)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Tests that use the Ray cluster are `ray`, the rest `unit`, so `-m unit` stays fast."""
    for item in items:
        uses_ray = RAY_FIXTURES & set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.ray if uses_ray else pytest.mark.unit)
