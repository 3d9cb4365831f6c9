"""Settings: read from the environment, a bad value stops a service naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.settings import CommonSettings, SettingsError, load_settings


def test_defaults_and_route_prefix() -> None:
    settings = load_settings(CommonSettings, {})
    assert settings.route_prefix == "/app-engine/v1"
    assert load_settings(CommonSettings, {"API_PREFIX": "/api/"}).route_prefix == "/api/v1"


def test_values_are_converted_from_text() -> None:
    settings = load_settings(CommonSettings, {"PORT": "9001", "RELAY_ENABLED": "false", "SHUTDOWN_TIMEOUT": "2.5"})
    assert (settings.port, settings.relay_enabled, settings.shutdown_timeout) == (9001, False, 2.5)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"RELAY_ENABLED": "perhaps"}, "RELAY_ENABLED"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"NATS_URL": "http://x"}, "NATS_URL"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(CommonSettings, env)
    assert str(err.value).startswith(f"{variable}:")


@pytest.mark.parametrize("service", ["registry", "scheduler", "storage", "executor"])
def test_a_service_with_a_bad_setting_exits_at_once_naming_it(service: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        env={"PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "PORT" in proc.stderr and "not-a-port" in proc.stderr
