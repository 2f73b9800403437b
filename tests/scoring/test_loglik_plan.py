"""Shared-prompt log-likelihood batches: equal to unbatched scoring, and re-plannable by Ray pool shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from harness.data.requests import LoglikRequest
from harness.models.tokenizer import train_bpe_tokenizer
from harness.scoring.backend import encode_loglik_request
from harness.scoring.hf_backend import HFBackend
from harness.scoring.loglik_plan import plan_loglik
from harness.scoring.sharding import loglik_shards

CORPUS = [
    "Question: Who wrote the book?\nAnswer: The author wrote it in Paris.",
    "Question: Where was she born?\nAnswer: She was born in Kuwait City in 1972.",
    "The quick brown fox jumps over the lazy dog.",
    "Answer the question about the novel and its famous writer.",
]
ANSWERS = [" The author wrote it in Paris.", " It was written in Paris by the author.", " Paris.",
           " The lazy dog wrote it.", " A fox wrote it in 1972 in Kuwait City, long ago.", " No one", " The"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(CORPUS, 320)


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast, peaked_llama) -> torch.nn.Module:
    return peaked_llama(len(tokenizer))


def tofu_requests() -> list[LoglikRequest]:
    """7 continuations per question (TOFU's answer, paraphrase, 5 perturbed), duplicates, edge cases."""
    reqs = [LoglikRequest(f"Question: {q}\nAnswer:", a)
            for q in ("Who wrote the book?", "Where was she born?", "Who?") for a in ANSWERS]
    reqs += [reqs[3], LoglikRequest("", "The lazy dog."), LoglikRequest("The", ""),
             LoglikRequest("The", "", add_eos=False), LoglikRequest("Who?", " Paris.", add_eos=False),
             LoglikRequest("word " * 600, " end")]  # left-truncated to the window
    return reqs


def direct(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, req: LoglikRequest) -> np.ndarray:
    """One unpadded forward pass over the tokens `HFBackend` scores."""
    ids, n_ctx = encode_loglik_request(tokenizer, req, model.config.max_position_embeddings)
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)[n_ctx - 1:len(ids) - 1]
    return lp.gather(-1, torch.tensor(ids[n_ctx:])[:, None])[:, 0].double().numpy()


@pytest.fixture(scope="module")
def unbatched(model, tokenizer) -> list[np.ndarray]:
    return [direct(model, tokenizer, r) for r in tofu_requests()]


@pytest.mark.parametrize(("batch_size", "max_tokens"), [(1, None), (3, 64), (32, 100000)])
def test_shared_prompt_batches_match_unbatched(model, tokenizer, unbatched, batch_size: int,
                                               max_tokens: int | None) -> None:
    reqs = tofu_requests()
    got = HFBackend(model, tokenizer, batch_size=batch_size, device="cpu",
                    max_batch_tokens=max_tokens).loglikelihood(reqs)
    for want, lp in zip(unbatched, got, strict=True):
        assert lp.dtype == np.float64 and lp.shape == want.shape
        np.testing.assert_allclose(lp, want, atol=1e-5, rtol=0)


def test_plan_shares_prompts_and_is_prefix_consistent(tokenizer) -> None:
    encoded = [encode_loglik_request(tokenizer, r, 512) for r in tofu_requests()]
    batches, empty = plan_loglik(encoded, 8, 300)
    assert len(empty) == 1  # "The" + "" without EOS
    covered = sorted(i for b in batches for i in b.requests) + empty
    assert sorted(covered) == list(range(len(encoded)))
    assert all(sum(len(u.continuations) for u in b.units) <= 8 for b in batches)
    # each (prompt, continuation) pair appears once: the duplicate request shares its slot
    assert sum(len(u.continuations) for b in batches for u in b.units) == len(encoded) - len(empty) - 1
    # re-planning any contiguous run of batches, in any request order, gives the same batches
    for lo in range(len(batches)):
        for hi in range(lo + 1, len(batches) + 1):
            idx = [i for b in batches[lo:hi] for i in b.requests][::-1]
            again, _ = plan_loglik([encoded[i] for i in idx], 8, 300)
            assert [sorted(idx[i] for i in b.requests) for b in again] == [sorted(b.requests) for b in batches[lo:hi]]


def test_pool_shards_reproduce_in_process_results_exactly(model, tokenizer) -> None:
    """What each Ray worker's HFBackend computes on its shard equals the in-process backend bit for bit."""
    reqs = tofu_requests() * 2
    backend = HFBackend(model, tokenizer, batch_size=4, device="cpu")
    want = backend.loglikelihood(reqs)
    for n in (2, 3):
        shards = loglik_shards(tokenizer, reqs, 4, backend.max_length, n)
        assert sorted(i for s in shards for i in s) == list(range(len(reqs)))
        for shard in shards:
            got = backend.loglikelihood([reqs[i] for i in shard])
            for i, lp in zip(shard, got, strict=True):
                assert np.array_equal(lp, want[i])


def test_batched_encoding_gives_the_per_request_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    """`encode_loglik_requests` (batched, each distinct text once) == `encode_loglik_request` per request, with
    empty contexts and continuations, no-EOS requests and left truncation to the window."""
    from harness.scoring.backend import encode_loglik_requests

    reqs = [*tofu_requests(), LoglikRequest("Who wrote", " it", add_eos=False), LoglikRequest("", "", add_eos=False),
            LoglikRequest("word " * 40, " Paris.")]
    for max_length in (None, 40):
        assert encode_loglik_requests(tokenizer, reqs, max_length) == [
            encode_loglik_request(tokenizer, r, max_length) for r in reqs]
    assert encode_loglik_requests(tokenizer, [], None) == []
