"""Analysis of what was said: live statistics (issue 13). Pure of the web and of SQL."""

from .stats import LiveStats, StatsSnapshot, Utterance

__all__ = ["LiveStats", "StatsSnapshot", "Utterance"]
