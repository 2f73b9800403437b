"""Scoring throughput: the HF backend vs lm-evaluation-harness's HFLM, a naive loop, 1 vs N Ray workers, vLLM.

Everything runs in one process on the builtin tiny Llama (4 layers, hidden 128), its matrices re-drawn
at std 0.1 so greedy generations are context-dependent and rarely stop at once (at the default init
they mostly repeat one token), with a byte-level BPE trained on synthetic TOFU text. The requests are
TOFU's: log-likelihood of the answer, paraphrase and perturbed answers after `Question: ...\\nAnswer:`,
and greedy answers to the questions.

Variants, each timed after a small warm-up call (best of `--repeats`):

- `naive`: per request one unpadded forward pass (log-likelihood), per prompt `model.generate` alone;
- `hf`: `HFBackend` (log-likelihood: each shared prompt run once, its continuations on the prompt's
  KV cache, batches of at most `--batch-size` continuations on a padded-token budget; generation:
  longest-first batches of `--batch-size`, padded, KV-cached);
- `lm-eval hf`: lm-evaluation-harness's `HFLM` over the same saved model directory, with its own
  batching (`--batch-size`), scoring the same (context, continuation + EOS text) pairs through
  `lm.loglikelihood` on `Instance` requests (log-likelihood only);
- `ray x1`, `ray xN`: `RayPoolBackend` over 1 and `--workers` `ScoringWorker` actors with
  `--worker-cpus` CPUs (and as many torch threads) each; actor start-up (model load) is not timed;
- `vllm`: `make_backend("vllm", ...)` when `vllm` is importable (else a note, and null ratios).

Throughput is in useful tokens per second, the same count for every variant: scored tokens (context +
continuation + EOS) for log-likelihood, and the new tokens greedy decoding produces up to EOS or the
limit (counted in the naive run) for generation. The driver runs `--threads` torch threads (default 1,
the same as one worker). The last line printed is one JSON object with the ratios.

    python benchmarks/eval_throughput.py            # defaults: ~1-2 minutes on 2 CPU cores
    python benchmarks/eval_throughput.py --quick    # seconds of scoring (Ray start-up dominates)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from harness.benchmarks.tofu.score import answer_text, prompt_for, stop_strings
from harness.benchmarks.tofu.synth import SyntheticTofuSpec, generate_tofu
from harness.data.requests import Backend, GenRequest, LoglikRequest
from harness.data.text import encode_pair
from harness.models.text import build_builtin, save_model
from harness.models.tokenizer import train_bpe_tokenizer
from harness.scoring.backend import make_backend
from harness.scoring.hf_backend import HFBackend


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; `--quick` shrinks every size for a smoke run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loglik-requests", type=int, default=512)
    parser.add_argument("--gen-prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--authors", type=int, default=40, help="synthetic TOFU authors (4 QA each)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the driver")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device of the naive, hf and lm-eval rows (cpu, cuda)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM row")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray worker comparison")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.loglik_requests, args.gen_prompts, args.max_new_tokens = 48, 8, 8
        args.batch_size, args.authors, args.repeats = 8, 10, 1
    return args


# ---- model, tokenizer, requests ---------------------------------------------------------------------


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, list[LoglikRequest], list[GenRequest]]:
    """Tokenizer, tiny Llama (matrices at std 0.1) and TOFU-shaped requests."""
    data = generate_tofu(SyntheticTofuSpec(n_authors=args.authors), args.seed)
    records = data["retain_perturbed"] + data["forget10_perturbed"] + data["forget10"] + data["retain90"]
    texts = sorted({t for r in records for t in (r["question"], r["answer"], r.get("paraphrased_answer", ""),
                                                *r.get("perturbed_answer", [])) if t})
    tokenizer = train_bpe_tokenizer(texts, 1024)
    model = build_builtin("tiny-llama", len(tokenizer), seed=args.seed).eval()
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    loglik: list[LoglikRequest] = []
    for r in records:
        prompt = prompt_for(r["question"], "plain")
        answers = [r["answer"], r.get("paraphrased_answer"), *r.get("perturbed_answer", [])]
        loglik.extend(LoglikRequest(prompt, answer_text(a, "plain")) for a in answers if a)
    loglik = [loglik[i % len(loglik)] for i in range(args.loglik_requests)]
    questions = [r["question"] for r in data["full"]]
    gens = [GenRequest(prompt_for(questions[i % len(questions)], "plain"), args.max_new_tokens,
                       stop_strings("plain")) for i in range(args.gen_prompts)]
    return model, tokenizer, loglik, gens


# ---- the naive loop ---------------------------------------------------------------------------------


class NaiveLoop(Backend):
    """One request at a time: an unpadded forward per log-likelihood, `model.generate` per prompt."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.new_tokens: list[int] = []

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        out = []
        with torch.inference_mode():
            for req in requests:
                ids, n_ctx = encode_pair(self.tokenizer, req.context, req.continuation, add_eos=req.add_eos)
                logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0].float().cpu()
                lp = logits[n_ctx - 1:len(ids) - 1].log_softmax(-1)
                out.append(lp.gather(-1, torch.tensor(ids[n_ctx:])[:, None])[:, 0].double().numpy())
        return out

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        eos = self.tokenizer.eos_token_id
        out, self.new_tokens = [], []
        with torch.inference_mode():
            for req in requests:
                ids = torch.tensor([self.tokenizer(req.prompt)["input_ids"]], device=self.device)
                seq = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=req.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                          eos_token_id=eos, temperature=None, top_p=None, top_k=None)
                new = seq[0, ids.shape[1]:].tolist()
                new = new[:new.index(eos)] if eos in new else new
                self.new_tokens.append(len(new))
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                out.append(next((text[:text.find(s)] for s in req.stop if s in text), text)
                           if req.stop else text)
        return out


# ---- timing -----------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def measure(backend: Backend, loglik: list[LoglikRequest], gens: list[GenRequest],
            repeats: int) -> dict[str, Any]:
    """Warm up, then time `loglikelihood` and `generate` over all requests."""
    backend.loglikelihood(loglik[:4])
    backend.generate([GenRequest(g.prompt, 2) for g in gens[:2]])
    t_ll, lp = timed(lambda: backend.loglikelihood(loglik), repeats)
    t_gen, texts = timed(lambda: backend.generate(gens), repeats)
    return {"loglik_s": t_ll, "generate_s": t_gen, "logprobs": lp, "texts": texts}


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest absolute difference between two lists of log-prob arrays (inf on a shape mismatch)."""
    return max((float(np.abs(x - y).max()) if x.shape == y.shape else float("inf")) for x, y in zip(a, b))


def lm_eval_row(model_dir: str, tokenizer: Any, loglik: list[LoglikRequest], batch_size: int,
                repeats: int, device: str = "cpu") -> tuple[dict[str, Any], list[float]]:
    """Time lm-evaluation-harness's HFLM on the same requests; per request its summed log-prob."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model_dir, backend="causal", batch_size=batch_size, device=device, dtype="float32")
    eos = tokenizer.eos_token
    instances = [Instance(request_type="loglikelihood", doc={}, idx=i,
                          arguments=(r.context, r.continuation + (eos if r.add_eos else "")))
                 for i, r in enumerate(loglik)]
    lm.loglikelihood(instances[:4], disable_tqdm=True)
    t_ll, out = timed(lambda: lm.loglikelihood(instances, disable_tqdm=True), repeats)
    return {"loglik_s": t_ll}, [float(lp) for lp, _ in out]


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """Tokens/s per variant and ratios against lm-evaluation-harness (log-likelihood) and the naive loop."""
    base_ll = rows.get("lm-eval hf", rows["naive"])["loglik_tok_s"]
    base_name = "lm-eval" if "lm-eval hf" in rows else "naive"
    lines = [f"| variant | loglik tok/s | loglik vs {base_name} | loglik vs naive | generate tok/s "
             "| generate vs naive | loglik s | generate s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        gen = r["generate_tok_s"]
        gen_cells = ("-", "-", "-") if gen is None else (
            f"{gen:.0f}", f"{gen / rows['naive']['generate_tok_s']:.2f}x", f"{r['generate_s']:.2f}")
        start = f" (actor start {r['start_s']:.1f}s)" if "start_s" in r else ""
        lines.append(f"| {name}{start} | {r['loglik_tok_s']:.0f} | {r['loglik_tok_s'] / base_ll:.2f}x | "
                     f"{r['loglik_tok_s'] / rows['naive']['loglik_tok_s']:.2f}x | {gen_cells[0]} | {gen_cells[1]} | "
                     f"{r['loglik_s']:.2f} | {gen_cells[2]} |")
    return "\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer, loglik, gens = build(args)
    ll_tokens = sum(len(encode_pair(tokenizer, r.context, r.continuation, r.add_eos)[0]) for r in loglik)
    print(f"tiny Llama ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), vocab {len(tokenizer)}; "
          f"{len(loglik)} log-likelihood requests ({ll_tokens} tokens), {len(gens)} prompts x "
          f"{args.max_new_tokens} new tokens; batch {args.batch_size}; driver threads {args.threads}", flush=True)

    rows: dict[str, dict[str, Any]] = {}
    naive = NaiveLoop(model.to(args.device), tokenizer)
    rows["naive"] = measure(naive, loglik, gens, 1)
    gen_tokens = sum(naive.new_tokens)
    rows["hf"] = measure(HFBackend(model, tokenizer, batch_size=args.batch_size, device=args.device), loglik, gens,
                         args.repeats)
    ref = rows["hf"]
    checks = {"hf_vs_naive_max_abs_logprob_diff": max_abs_diff(ref["logprobs"], rows["naive"]["logprobs"]),
              "hf_vs_naive_same_generations": float(np.mean([a == b for a, b in zip(ref["texts"],
                                                                                   rows["naive"]["texts"])]))}

    notes = []
    with tempfile.TemporaryDirectory(prefix="eval-throughput-") as tmp:
        save_model(model.cpu(), tokenizer, tmp)
        rows["lm-eval hf"], lm_sums = lm_eval_row(tmp, tokenizer, loglik, args.batch_size, args.repeats,
                                                     args.device)
        ours = np.array([float(lp.sum()) for lp in ref["logprobs"]])
        checks["hf_vs_lm_eval_max_abs_sum_logprob_diff"] = float(np.abs(ours - np.array(lm_sums)).max())
        if not args.no_ray:
            from harness.scoring.parallel import ScoringPool

            for n in sorted({1, args.workers}):
                with ScoringPool(n, batch_size=args.batch_size, num_cpus=args.worker_cpus) as pool:
                    t0 = time.perf_counter()
                    backend = pool.backend(tmp, tokenizer=tokenizer)
                    start_s = time.perf_counter() - t0
                    rows[f"ray x{n}"] = measure(backend, loglik, gens, args.repeats)
                    rows[f"ray x{n}"]["start_s"] = start_s
                got = rows[f"ray x{n}"]
                checks[f"ray_x{n}_identical_to_hf"] = bool(
                    max_abs_diff(got["logprobs"], ref["logprobs"]) == 0.0 and got["texts"] == ref["texts"])
        else:
            notes.append("Ray workers skipped (--no-ray)")

    if args.no_vllm:
        notes.append("vllm skipped (--no-vllm)")
    elif importlib.util.find_spec("vllm") is not None:
        try:
            vllm_backend = make_backend("vllm", model, tokenizer, args.batch_size, "cpu")
            try:
                rows["vllm"] = measure(vllm_backend, loglik, gens, args.repeats)
            finally:
                getattr(vllm_backend, "close", lambda: None)()
            vllm_ll = rows["vllm"]["logprobs"]
            checks["vllm_vs_hf_max_abs_logprob_diff"] = max_abs_diff(vllm_ll, ref["logprobs"])
            checks["vllm_vs_hf_same_generations"] = float(np.mean([a == b for a, b in zip(rows["vllm"]["texts"],
                                                                                         ref["texts"])]))
        except Exception as err:  # noqa: BLE001 - any failure of the optional engine is reported, not fatal
            notes.append(f"vllm is importable but its backend failed: {type(err).__name__}: {err}")
    else:
        notes.append("vllm is not importable here: vllm vs hf skipped")

    for r in rows.values():
        r["loglik_tok_s"] = ll_tokens / r["loglik_s"]
        r["generate_tok_s"] = gen_tokens / r["generate_s"] if "generate_s" in r else None
    print(markdown_table(rows))
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ref["texts"]]
    print(f"\ngenerated {gen_tokens} new tokens (mean {gen_tokens / len(gens):.1f}/prompt; after cutting at stop "
          f"strings {statistics.mean(lengths):.1f}), {len(set(ref['texts']))} distinct of {len(gens)}; "
          f"sample: {ref['texts'][0][:60]!r}")
    for key, value in checks.items():
        print(f"check {key}: {value}")
    for note in notes:
        print(f"note: {note}")

    def ratio(a: str, b: str, kind: str) -> float | None:
        if a not in rows or b not in rows or rows[a][f"{kind}_tok_s"] is None or rows[b][f"{kind}_tok_s"] is None:
            return None
        return round(rows[a][f"{kind}_tok_s"] / rows[b][f"{kind}_tok_s"], 3)

    summary = {
        "batched_over_naive_loglik": ratio("hf", "naive", "loglik"),
        "batched_over_naive_generate": ratio("hf", "naive", "generate"),
        f"workers{args.workers}_over_workers1_loglik": ratio(f"ray x{args.workers}", "ray x1", "loglik"),
        f"workers{args.workers}_over_workers1_generate": ratio(f"ray x{args.workers}", "ray x1", "generate"),
        "vllm_over_hf_loglik": ratio("vllm", "hf", "loglik"),
        "hf_over_lm_eval_loglik": ratio("hf", "lm-eval hf", "loglik"),
        "vllm_over_lm_eval_loglik": ratio("vllm", "lm-eval hf", "loglik"),
        "vllm_over_hf_generate": ratio("vllm", "hf", "generate"),
        "tokens_per_s": {name: {"loglik": round(r["loglik_tok_s"], 1),
                                "generate": None if r["generate_tok_s"] is None else round(r["generate_tok_s"], 1)}
                         for name, r in rows.items()},
        "checks": checks,
        "settings": {k: v for k, v in vars(args).items() if k != "quick"} | {"quick": args.quick},
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
