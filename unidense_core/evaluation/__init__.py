"""Evaluation: the Marigold depth protocol as MERGE implements it, benchmark layouts, estimators, batch inference."""
