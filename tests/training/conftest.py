"""Fixtures of the training tests: tiny random-weight TTE model folders and synthetic pair data (see helpers.py).

Every model here has random weights (training/tiny_models.py).
"""

import pytest
import torch

from training.tiny_models import build_tte
from training.synthetic_pairs import write_pair_data, write_trace_store


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    """Factory `model_folder(variant)`: a saved tiny random-weight Qwen2-VL TTE model of that variant (cached)."""
    folders = {}

    def get(variant: str) -> str:
        if variant not in folders:
            folder = str(tmp_path_factory.mktemp(f"tte_{variant}"))
            build_tte("qwen2_vl", variant).save_pretrained(folder)
            folders[variant] = folder
        return folders[variant]

    return get


@pytest.fixture(scope="session")
def pair_data(tmp_path_factory) -> str:
    """Data config of the synthetic text + image pair sources."""
    return write_pair_data(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="session")
def trace_store(tmp_path_factory, pair_data) -> str:
    return write_trace_store(tmp_path_factory.mktemp("traces") / "store", pair_data)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; several threads contend on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
