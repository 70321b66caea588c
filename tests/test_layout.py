"""Packaging: the top-level folders install as psflow's subpackages and nothing generic."""

import importlib
import importlib.metadata
import pathlib

import pytest

SUBPACKAGES = {"psflow.ps": "ps", "psflow.worker": "worker", "psflow.proto": "proto",
               "psflow.launcher": "launcher"}


@pytest.mark.parametrize("module,folder", sorted(SUBPACKAGES.items()))
def test_top_level_folders_import_as_psflow_subpackages(module, folder):
    package = importlib.import_module(module)
    assert pathlib.Path(package.__file__).parent.name in (folder, module.split(".")[-1])


def test_nothing_generic_is_installed_at_the_top_of_site_packages():
    files = importlib.metadata.files("psflow") or []
    top_levels = {f.parts[0] for f in files if f.suffix == ".py"}
    assert not top_levels & {"ps", "worker", "proto", "launcher", "tests", "examples", "bench"}
