"""Helpers that test modules import (tests/ is on pytest's pythonpath): no tests here."""
