"""A fixture that runs a test module's torch work on one thread.

Small models gain nothing from a second intra-op thread, and on a shared, loaded CPU the spinning
threads slow each call by an order of magnitude (measured: a tiny-random thoughts run 29 s → 3.6 s).
"""

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
