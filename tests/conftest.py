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


#: Tests of more than a few seconds each on the 2-core machine (node id prefixes): left out by
#: ``make test-fast`` (``-m "not slow and not s3 and not dask and not packaging"``), run by
#: ``make test``. Whole files where every test is end to end through a framework.
SLOW = (
    "tests/core/test_fuzz.py",
    "tests/core/test_onnx_thirdparty.py",
    "tests/core/test_resume.py",
    "tests/core/test_store.py::test_four_jobs",
    "tests/core/test_store.py::test_readers_during_writes",
    "tests/core/test_store.py::test_migrate_then_add_a_run",
    "tests/core/test_imports.py",
    "tests/core/test_missing_extras.py",
    "tests/core/test_runtime.py::test_the_probe_command_shares_the_arena",
    "tests/core/test_layer_shapes.py::test_figures_and_report_draw_padded_maps",
    "tests/core/test_report.py::test_every_figure_renders_in_chromium",
    "tests/core/test_analysis.py::test_plot_command_writes_figures",
    "tests/core/test_probesets.py::test_reading_a_memory_mapped_probe_set_does_not_keep_its_pages",
    "tests/core/test_exclusive_create.py::test_busy_409_is_retried_then_reported",
    "tests/core/test_names.py::test_each_adapter_extra_installs_what_it_requires",
    "tests/jax/",
    "tests/keras/",
    "tests/torch/",
    "tests/hf/",
)


def pytest_collection_modifyitems(items):
    """Markers from where a test lives and what it uses (``slow``, ``s3``, ``dask``,
    ``packaging``; registered in pyproject.toml), then the packaging test first: it spends most
    of its minutes waiting on pip, so with ``-n 2`` it overlaps the rest of the suite instead of
    trailing it."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if item.nodeid.startswith("tests/packaging/"):
            item.add_marker(pytest.mark.packaging)
        if "s3_server" in fixtures or "s3_bucket" in fixtures:
            item.add_marker(pytest.mark.s3)
        if item.nodeid.startswith("tests/core/test_parallel.py") or "dask" in item.nodeid:
            item.add_marker(pytest.mark.dask)
        # the shared adapter contract through a framework (not the built-in ONNX adapter)
        framework = item.nodeid.startswith("tests/core/test_adapters.py") and \
            item.nodeid.endswith(("[torch]", "[keras]", "[jax]", "[hf]"))
        if item.nodeid.startswith(SLOW) or framework:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: "tests/packaging/" not in item.nodeid)
