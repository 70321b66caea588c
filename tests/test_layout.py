"""Packaging: the top-level folders install as psflow's subpackages and nothing generic."""

import importlib
import importlib.metadata
import pathlib
import sysconfig

import pytest

SUBPACKAGES = {"psflow.ps": "ps", "psflow.worker": "worker", "psflow.proto": "proto",
               "psflow.launcher": "launcher"}


@pytest.mark.parametrize("module,folder", sorted(SUBPACKAGES.items()))
def test_top_level_folders_import_as_psflow_subpackages(module, folder):
    package = importlib.import_module(module)
    assert pathlib.Path(package.__file__).parent.name in (folder, module.split(".")[-1])


def test_nothing_generic_is_installed_at_the_top_of_site_packages():
    # Look in site-packages only: a source checkout holds an in-tree psflow.egg-info that lists
    # the folders by their checkout names.
    site = sysconfig.get_paths()["purelib"]
    dists = list(importlib.metadata.distributions(name="psflow", path=[site]))
    if not dists:
        pytest.skip(f"psflow is not installed in {site}")
    files = dists[0].files or []
    assert files, "the installed psflow lists no files"
    top_levels = {f.parts[0] for f in files if f.suffix == ".py"}
    assert not top_levels & {"ps", "worker", "proto", "launcher", "tests", "examples", "bench"}
