"""Attacks on unlearned models (relearn, quantize, rephrase, mia): one file and one `@ATTACKS.register` each.

`harness.attacks.runner.run_attacks` runs those a job's `attacks:` section enables (harness/config/attacks.py)
on every scored model; the pipeline calls it once per job, after the unattacked scoring.
"""
