"""Shared test settings."""

import torch

# The test models are tiny: intra-op threads buy nothing, and on a busy 2-core machine OpenMP
# threads that spin-wait for each other make a step up to 10x slower. One thread is fastest here.
torch.set_num_threads(1)
