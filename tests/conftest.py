import os

import pytest
import torch

from refdata import load_reference_model

# torch 2.14.1: CPU flash attention in bfloat16 packs with an AVX-512 routine whenever the
# CPU has AMX, even when ATEN_CPU_CAPABILITY forces avx2 or default kernels, and fails
# ("pack_vnni2 is only supported when avx512 is supported").  Runs that force a lower
# capability (CI's numerics rerun) use the math attention path instead.
if os.environ.get("ATEN_CPU_CAPABILITY") and torch.backends.cpu.get_cpu_capability() in (
        "DEFAULT", "AVX2"):
    torch.backends.cuda.enable_flash_sdp(False)  # the flag is global: it covers the CPU too


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


@pytest.fixture
def one_thread():
    """For tiny models (heads, training): on shared cores, intra-op threads only add
    waiting.  Folders of such tests use it autouse in their conftest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
