"""Fixtures of the pipeline tests that start real servers."""

from tests.mqtt_broker import mosquitto  # noqa: F401 - a fixture for the tests here
