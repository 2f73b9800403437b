"""TDEC (Jang et al. 2023, knowledge unlearning): forget memorised training sequences; MA and EL_n metrics."""
