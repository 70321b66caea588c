"""psflow.settings: every environment setting parsed and checked in one place, with an error
that names the variable and the value."""

import pytest

from psflow import settings
from psflow.settings import SettingError


def test_unset_or_blank_settings_take_their_defaults():
    for setting in settings.ALL:
        assert setting.get({}) == setting.default
        assert setting.get({setting.name: "  "}) == setting.default
    assert settings.STEP_TIMEOUT.get({}) == 300.0
    assert settings.LANE.get({}) is True and settings.ALLOW_NONFINITE.get({}) is False


def test_values_are_parsed_by_kind():
    assert settings.STEP_TIMEOUT.get({"PSFLOW_STEP_TIMEOUT": "2.5"}) == 2.5
    assert settings.METRICS_PORT.get({"PSFLOW_METRICS_PORT": "0"}) == 0
    assert settings.PARENT_PID.get({"PSFLOW_PARENT_PID": "4242"}) == 4242
    assert settings.LANE.get({"PSFLOW_LANE": "0"}) is False
    assert settings.ALLOW_NONFINITE.get({"PSFLOW_ALLOW_NONFINITE": "1"}) is True
    assert settings.MODE.get({"PSFLOW_MODE": "ssp"}) == "ssp"
    assert settings.STALENESS.get({"PSFLOW_STALENESS": "3"}) == 3
    assert settings.CHECKPOINT_DIR.get({"PSFLOW_CHECKPOINT_DIR": "/ckpt"}) == "/ckpt"
    assert settings.EXPORT_DIR.get({"PSFLOW_EXPORT_DIR": "/ckpt/export"}) == "/ckpt/export"
    assert settings.EXPORT_EVERY_N_CHECKPOINTS.get(
        {"PSFLOW_EXPORT_EVERY_N_CHECKPOINTS": "3"}) == 3


@pytest.mark.parametrize("name,value,message", [
    ("PSFLOW_STEP_TIMEOUT", "soon", "PSFLOW_STEP_TIMEOUT must be a number of seconds, got 'soon'"),
    ("PSFLOW_DEAD_AFTER", "-1", "PSFLOW_DEAD_AFTER must be more than 0 seconds, got -1"),
    ("PSFLOW_SUMMARY_SECS", "inf", "PSFLOW_SUMMARY_SECS must be more than 0 seconds, got inf"),
    ("PSFLOW_METRICS_PORT", "70000", "PSFLOW_METRICS_PORT must be a port number from 0 to 65535, "
                                     "got 70000"),
    ("PSFLOW_PARENT_PID", "0", "PSFLOW_PARENT_PID must be at least 1, got 0"),
    ("PSFLOW_MODE", "fast", "PSFLOW_MODE must be one of async, sync, ssp, got 'fast'"),
    ("PSFLOW_EXPORT_EVERY_N_CHECKPOINTS", "0", "PSFLOW_EXPORT_EVERY_N_CHECKPOINTS must be at "
                                               "least 1, got 0"),
    ("PSFLOW_STALENESS", "-2", "PSFLOW_STALENESS must be at least 0, got -2"),
    ("PSFLOW_REPLICAS_TO_AGGREGATE", "two", "PSFLOW_REPLICAS_TO_AGGREGATE must be a whole number, "
                                            "got 'two'"),
])
def test_a_bad_value_names_the_variable_and_the_value(name, value, message):
    setting = next(s for s in settings.ALL if s.name == name)
    with pytest.raises(SettingError) as caught:
        setting.get({name: value})
    assert str(caught.value) == message
    with pytest.raises(SettingError, match=name):
        settings.check({name: value})
    assert isinstance(caught.value, ValueError)


def test_every_setting_is_listed_once_in_the_module_doc():
    names = [s.name for s in settings.ALL]
    assert len(names) == len(set(names)) == 28
    for name in names:
        short = name.rsplit("_", 1)[-1]
        assert name in settings.__doc__ or f"_{short}" in settings.__doc__, name
    settings.check({})
