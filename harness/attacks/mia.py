"""The membership-inference attack (TOFU): LOSS, ZLib, Min-K%, Min-K%++, Reference and GradNorm, each an AUC of the
forget split against the holdout split (authors no model trained on), as open-unlearning computes them
(formulas and citations: harness.benchmarks.mia).

LOSS, ZLib, Min-K% and Reference need only the answer tokens' log-probabilities: they are scored through the
job's scoring path (the Ray pool when `eval.workers` > 1). Min-K%++ needs the whole next-token distribution and
GradNorm a backward pass, which the backends' two request types do not return: both are computed in this
process on the merged model, the same way for any number of workers (GradNorm: every parameter trainable, eval
mode, so it is deterministic; open-unlearning switches to train mode, which only matters with dropout).
Reference uses the job's retain model as the reference model (open-unlearning's TOFU setting).
Rows: `attack=mia`, `attack_variant=auc`, metric `mia_<statistic>` on the forget split.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.attacks.base import (
    ATTACKS,
    REFERENCES,
    Attack,
    AttackInputs,
    AttackOutput,
    ModelKey,
    merged_copy,
    tag,
)
from harness.benchmarks import mia as M
from harness.benchmarks.base import ModelScores
from harness.benchmarks.tofu.benchmark import Tofu
from harness.benchmarks.tofu.score import answer_text, prompt_for
from harness.core.errors import DataError, SpecError
from harness.data.requests import LoglikRequest
from harness.data.text import encode_pair

SETS = ("forget", "holdout")


class MiaView:
    """Scores the answer log-probabilities of the forget and holdout QA (what the LOSS-type statistics read)."""

    modality = "text"

    def __init__(self, bench: Tofu, max_examples: int | None) -> None:
        if bench.data.holdout is None:
            raise DataError(f"attacks.mia: the TOFU source {bench.data.source} has no holdout split "
                            f"(holdout{bench.spec.forget_split.removeprefix('forget')})")
        self.name = bench.name
        self.fmt = bench.spec.prompt_format
        forget = bench.data.eval_splits[bench.spec.forget_split]
        self.records = {"forget": forget[:max_examples], "holdout": bench.data.holdout[:max_examples]}

    def requests(self, tokenizer: Any) -> dict[str, list[LoglikRequest]]:
        """The log-likelihood requests of each set: the prompt, then the answer plus EOS."""
        return {s: [LoglikRequest(prompt_for(r["question"], self.fmt, tokenizer), answer_text(r["answer"], self.fmt))
                    for r in recs] for s, recs in self.records.items()}

    def score(self, backend: Any, tokenizer: Any, eval_spec: Any) -> ModelScores:
        reqs = self.requests(tokenizer)
        flat = backend.loglikelihood([r for s in SETS for r in reqs[s]])
        n = len(reqs["forget"])
        raw = {"forget": flat[:n], "holdout": flat[n:]}
        examples = [{"split": s, "example_id": i, "metric": "mia_loss", "value": M.loss_score(lp)}
                    for s in SETS for i, lp in enumerate(raw[s])]
        return ModelScores(examples=examples, raw=raw)


def model_statistics(model: torch.nn.Module, tokenizer: Any, requests: list[LoglikRequest], k: float, p: float,
                     device: torch.device) -> tuple[list[float], list[float]]:
    """Per request, the Min-K%++ score and the GradNorm score, from the model's logits and gradients."""
    model = model.to(device).eval()
    params = [q for q in model.parameters()]
    for q in params:
        q.requires_grad_(True)
    max_len = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
    mkpp, grads = [], []
    for req in requests:
        ids, n_ctx = encode_pair(tokenizer, req.context, req.continuation, add_eos=req.add_eos)
        if max_len is not None and len(ids) > max_len:  # keep the answer; lose context from the left
            drop = len(ids) - max_len
            ids, n_ctx = ids[drop:], n_ctx - drop
            if n_ctx < 1:
                raise ValueError(f"attacks.mia: an answer does not fit the model's {max_len}-token window")
        x = torch.tensor([ids], device=device)
        logits = model(input_ids=x).logits[0, n_ctx - 1: -1].float()
        vocab = torch.log_softmax(logits, dim=-1)
        tokens = vocab.gather(1, x[0, n_ctx:].unsqueeze(1)).squeeze(1)
        mkpp.append(M.min_k_plus_plus_score(tokens.detach().cpu().double().numpy(),
                                            vocab.detach().cpu().double().numpy(), k))
        model.zero_grad(set_to_none=True)
        (-tokens.mean()).backward()
        norms = [float(q.grad.detach().norm(p=p)) for q in params if q.grad is not None]
        grads.append(M.gradnorm_score(norms))
    model.zero_grad(set_to_none=True)
    return mkpp, grads


@ATTACKS.register("mia")
class Mia(Attack):
    """The AUC of every statistic of `attacks.mia.statistics`, forget vs holdout, for every model."""

    name = "mia"

    def run(self, inputs: AttackInputs) -> AttackOutput:
        opts, out = self.options, AttackOutput()
        if not isinstance(inputs.bench, Tofu):
            raise SpecError(f"attacks.mia: the {inputs.bench.name} benchmark has no forget/holdout QA (TOFU only)")
        view = MiaView(inputs.bench, opts.max_examples)
        same: dict[ModelKey, ModelKey] = {key: key for key in inputs.models}
        inputs.log(f"attack mia: scoring {len(same)} model(s) on {len(view.records['forget'])} forget and "
                   f"{len(view.records['holdout'])} holdout examples")
        scores = inputs.score(view, same)  # type: ignore[arg-type]
        texts = {s: [r["answer"] for r in view.records[s]] for s in SETS}
        need_model = {"min_k_plus_plus", "gradnorm"} & set(opts.statistics)
        params: dict[str, Any] = {"k": opts.k, "p": opts.p, "n_forget": len(texts["forget"]),
                                  "n_holdout": len(texts["holdout"])}
        split = inputs.bench.spec.forget_split
        for (name, seed), load in inputs.models.items():
            raw = scores[(name, seed)].raw
            ref_key = ("retain", seed if name in REFERENCES else inputs.ref_seed(seed))
            ref = scores[ref_key].raw if ref_key in scores else None
            per: dict[str, dict[str, list[float]]] = {s: {} for s in SETS}
            for s in SETS:
                lps = raw[s]
                per[s]["loss"] = [M.loss_score(lp) for lp in lps]
                per[s]["zlib"] = [M.zlib_score(lp, t) for lp, t in zip(lps, texts[s], strict=True)]
                per[s]["min_k"] = [M.min_k_score(lp, opts.k) for lp in lps]
                if ref is not None:
                    per[s]["reference"] = [M.reference_score(a, b) for a, b in zip(lps, ref[s], strict=True)]
            if need_model:
                model, tokenizer = merged_copy(load)
                reqs = view.requests(tokenizer)
                for s in SETS:
                    per[s]["min_k_plus_plus"], per[s]["gradnorm"] = model_statistics(
                        model, tokenizer, reqs[s], opts.k, M.norm_order(opts.p), inputs.device)
                del model
            rows = [{"split": split, "metric": f"mia_{stat}", "value": M.mia_auc(per["forget"][stat],
                                                                                 per["holdout"][stat])}
                    for stat in opts.statistics if stat in per["forget"]]
            out.metric_rows += tag(rows, self.name, "auc", params, name, seed)
            out.example_rows += tag([{"benchmark": view.name, "split": s, "example_id": i, "metric": f"mia_{stat}",
                                      "value": float(v)} for s in SETS for stat, vals in per[s].items()
                                     for i, v in enumerate(vals)], self.name, "auc", params, name, seed)
        return out

