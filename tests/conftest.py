"""Shared test settings."""

import pytest
import torch

# The test models are tiny: intra-op threads buy nothing, and on a busy 2-core machine OpenMP
# threads that spin-wait for each other make a step up to 10x slower. One thread is fastest here.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """The tiny env's teacher cache, shared by every test module of a run (teachers train once)."""
    path = tmp_path_factory.getbasetemp() / "dynakd-tiny-cache"
    path.mkdir(exist_ok=True)
    return path
