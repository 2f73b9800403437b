"""Checks that fail a job before any work: the model's config is readable, every method's adapter finds MLP layers,
the out dir can take the results. Read from configs only (no weights are loaded), like `--dry-run`'s plan."""

from __future__ import annotations

from transformers import PretrainedConfig

from harness.adapters.targets import adapted_mlp_names
from harness.models.image import image_classifier_config
from harness.models.text import builtin_config, is_builtin, load_model_config
from harness.results.run_dir import check_out_dir
from harness.spec import JobSpec
from harness.train.memory import meta_model

#: Vocabulary size assumed for builtin models before their tokenizer is trained.
BUILTIN_VOCAB = 1024


#: Classes assumed for an image classifier's head in a plan (CIFAR-100's; the head is a tiny share).
PLAN_CLASSES = 100


def job_model_config(spec: JobSpec) -> PretrainedConfig:
    """The job's model config, read without loading weights (builtin models with a nominal vocabulary)."""
    if spec.benchmark.modality == "image":
        return image_classifier_config(spec.model.name, [str(c) for c in range(PLAN_CLASSES)],
                                       spec.model.trust_remote_code)
    if is_builtin(spec.model.name):
        return builtin_config(spec.model.name, BUILTIN_VOCAB)
    return load_model_config(spec.model.name, spec.model.trust_remote_code)


def preflight(spec: JobSpec, overwrite: bool = False) -> None:
    """Fail before any work when the job cannot run: its model's config is unreadable (ModelError), a method's
    adapter finds no MLP layer to wrap (ModelError naming the model), or the out dir cannot take the results
    (OutputError naming it: not writable, or holding a finished run's results and not `overwrite`)."""
    model = meta_model(job_model_config(spec))
    for method in spec.methods:
        adapted_mlp_names(model, spec.model.name, method.adapter.targets)
    check_out_dir(spec.out_dir(), overwrite)
