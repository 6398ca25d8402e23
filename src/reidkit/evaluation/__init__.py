"""Evaluation: ranking metrics, k-reciprocal re-ranking and plots."""
