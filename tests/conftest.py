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


@pytest.fixture(autouse=True, scope="session")
def _sb3_logs_in_pytest_temp(tmp_path_factory):
    """An SB3 agent learning without TensorBoard still makes a logger folder, by default a new
    ``$TMPDIR/SB3-<time>`` per ``learn`` call that nobody removes; keep them in pytest's temp."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3-logs")))
    yield
    mp.undo()
