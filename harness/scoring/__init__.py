"""Scoring backends (hf, vllm) and text metrics."""
