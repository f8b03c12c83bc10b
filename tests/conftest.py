"""Shared test settings."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors on a 2-core machine: one intra-op thread per test process avoids OpenMP
    spin-waiting between two pytest workers. Acts only where a test module imported torch, so
    the core tests stay framework-free."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(items):
    """The packaging test (tests/packaging) first: it spends most of its minutes waiting on
    pip, so with ``-n 2`` it overlaps the rest of the suite instead of trailing it."""
    items.sort(key=lambda item: "tests/packaging/" not in item.nodeid)
