import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The heads are tiny: on shared cores, intra-op threads only add waiting.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
