"""Fixtures of the evaluation-harness tests: the synthetic MMEB data directory and a deterministic encoder."""

import pytest
from tests.eval.synthetic_mmeb import HashEncoder, write_synthetic_mmeb

from tte_eval.cache import Manifest


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    """(data directory, task names per group) of the synthetic MMEB fixture, written once per session."""
    root = str(tmp_path_factory.mktemp("mmeb"))
    return root, write_synthetic_mmeb(root)


@pytest.fixture
def data_dir(synthetic_data) -> str:
    """The synthetic MMEB-V2 data directory (MMEB-V1 rows are under `v1/`)."""
    return synthetic_data[0]


@pytest.fixture
def hash_encoder() -> HashEncoder:
    """A fresh deterministic encoder that records its calls."""
    return HashEncoder()


@pytest.fixture
def manifest() -> Manifest:
    """A manifest for runs with the test encoder."""
    return Manifest("sha256-of-test-encoder", "ecr-v1", 28 * 28 * 1280, 8, "mmeb-v2/test")
