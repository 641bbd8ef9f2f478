"""Shared fixtures. Ray-backed fixtures live in the integration test modules (one Ray per module)."""

from __future__ import annotations
