"""Orchestration entry points: the Prefect flow lives in ``embedforge.flow``; this package runs it."""
