import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """CKA tests use tiny matrices: extra OpenMP threads only wait on each other (badly so
    on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
