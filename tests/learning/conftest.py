"""One intra-op thread while these tests train their tiny models: on a small shared machine two threads
fighting other work made a 0.3 s fixture script take 10 s."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
