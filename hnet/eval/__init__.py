"""Evaluation: spelling noise (noise.py), multiple-choice tasks and their scorer (tasks.py)."""
