"""The `harness` commands (L7). Each command's module owns its arguments (`add_arguments(parser)`) and runs it
(`main(args) -> int`, the exit code); harness/cli.py only parses and dispatches.

`COMMANDS` names each command's module and one-line help: a module is imported only for the command that runs, so
`harness --help` loads no torch, Ray or pandas.
"""

#: command -> (its module, its one-line help), in `harness --help` order
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("harness.commands.run", "run a job spec: unlearn with each method, score, write results"),
    "eval": ("harness.commands.eval", "score models without training (HF models, PEFT or harness adapters, a "
             "finished run's methods) against the job's reference models; same results as run"),
    "export": ("harness.commands.export", "write a run's method as a plain merged Hugging Face checkpoint"),
    "tune": ("harness.commands.tune", "search a method's settings with Ray Tune (Optuna + ASHA)"),
    "study": ("harness.commands.study", "every method of a job searched with the same budget, selected at matched "
              "utility, confirmed on fresh seeds"),
    "sweep": ("harness.commands.sweep", "a grid (or random) sweep over spec fields: every configuration x seed"),
    "report": ("harness.commands.report", "compare finished runs side by side (report.md + report.html)"),
    "nightly": ("harness.commands.nightly.run", "run a suite, compare with the baseline; exit 1 on a regression"),
    "submit": ("harness.commands.submit", "run a job spec on a Ray cluster through the Ray Jobs API"),
    "jobs": ("harness.commands.jobs", "status, logs or stop of a submitted job"),
    "cluster": ("harness.commands.cluster", "Ray cluster utilities"),
    "data": ("harness.commands.data", "benchmark data utilities"),
}
