import pytest
import torch

from refdata import load_reference_model


@pytest.fixture(scope="session")
def tiny_adm():
    """The toy guided-diffusion U-Net of the reference fixtures (32 px, unconditional)."""
    torch.manual_seed(0)
    return load_reference_model("adm", "adm_tiny_uncond")


@pytest.fixture(autouse=True)
def _quiet_threads():
    # Two cores shared by everything: oversubscription only slows tests down.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
