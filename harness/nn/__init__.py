"""Shared network blocks, losses and schedules."""
