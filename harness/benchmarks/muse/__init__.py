"""MUSE (Shi et al. 2024): unlearn news articles; verbatim memory, knowledge memory, privacy leakage, utility."""
