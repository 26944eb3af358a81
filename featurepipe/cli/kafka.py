"""Kafka commands: produce (events to a topic), dlq (dead letters: list, show, replay)."""

from __future__ import annotations

from featurepipe.cli.app import app  # noqa: F401
