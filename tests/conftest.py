"""Fixtures shared by every test tier that runs in the main virtualenv."""

from __future__ import annotations
