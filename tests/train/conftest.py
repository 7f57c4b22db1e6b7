import pytest


@pytest.fixture(autouse=True)
def _tiny_models(one_thread):
    """Every test here trains tiny models: one torch thread (see tests/conftest.py)."""
