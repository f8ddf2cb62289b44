"""Suite-wide settings: CUDA-only tests skipped without a device, a fixed seed per test, one
intra-op thread per test process, and tests that share a module's expensive fixture kept on
one pytest-xdist worker.

The suite runs one pytest-xdist worker per core (``addopts`` in ``pyproject.toml``), so a
second intra-op thread per process only oversubscribes the cores; most tests also run many
tiny ops, where the thread pool's hand-offs cost more than the work. Child processes (the
command-line and multi-process tests) inherit ``OMP_NUM_THREADS=1``.

Without CUDA, Triton is imported here with ``TRITON_INTERPRET=1`` (and the flag removed
again): Triton's interpreter only works in a process whose first import of
``triton.language`` saw the flag, and any test module importing torchvision or timm imports
Triton while it is collected, before ``tests/functional/test_triton_kernels.py`` sets it.
"""

import importlib.util
import os

import pytest
import torch

from normlab.data.sample_folder import write_sample_folder

torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


def _import_triton_for_its_interpreter() -> None:
    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        importlib.import_module("triton.language")
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_import_triton_for_its_interpreter()


def pytest_collection_modifyitems(config, items):
    """Run the ``slow`` tests first (pytest-xdist hands out work in this order, so no long
    test is left running alone at the end), and skip the ``gpu`` tests without CUDA."""
    items.sort(key=lambda item: "slow" not in item.keywords)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_itemcollected(item):
    """Put the tests that use a module- or wider-scoped fixture defined in their own module
    (spawned process groups, a trained run) in one pytest-xdist group per module, so the
    fixture is built once rather than once per worker. A group runs on one worker, so a
    cheap fixture (one that sets an environment flag) should be function-scoped and group
    nothing. Runs during collection, before pytest-xdist reads the groups
    (``--dist loadgroup``)."""
    module = getattr(item, "module", None)
    if module is None:
        return
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        fixture = definitions[-1]
        if fixture.scope != "function" and fixture.func.__module__ == module.__name__:
            item.add_marker(pytest.mark.xdist_group(module.__name__))
            return


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory):
    """A small ImageNet-format folder (what ``normlab data sample OUT`` writes): 10 classes,
    16 training and 8 validation JPEGs each, 32 pixels high; the tiny ImageNet recipes
    stream it (``--set data.root=...``)."""
    out = tmp_path_factory.mktemp("sample") / "imagenet"
    return write_sample_folder(out, per_class=16, size=32)
