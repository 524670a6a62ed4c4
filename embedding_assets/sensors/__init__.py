"""Sensor logic as plain functions (the Dagster sensors in `defs/sensors.py` are thin)."""
