"""Evaluators: STS correlation, and (with the evaluate stage) separation, retrieval and speed."""
