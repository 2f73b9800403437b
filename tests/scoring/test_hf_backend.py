"""HFBackend against direct one-example-at-a-time computations on a tiny random Llama."""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from harness.data.requests import GenRequest, LoglikRequest
from harness.data.text import encode_pair
from harness.models.tokenizer import train_bpe_tokenizer
from harness.scoring.backend import BACKENDS, cut_at_stop, make_backend
from harness.scoring.hf_backend import HFBackend


def direct_logprobs(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast,
                    req: LoglikRequest) -> np.ndarray:
    """Continuation log-probs from one unpadded forward pass."""
    ids, n_ctx = encode_pair(tokenizer, req.context, req.continuation, add_eos=req.add_eos)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = logits.log_softmax(-1)[n_ctx - 1:len(ids) - 1]
    return lp.gather(-1, torch.tensor(ids[n_ctx:])[:, None])[:, 0].double().numpy()


def manual_greedy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, prompt: str,
                  max_new: int) -> str:
    """Greedy decoding by argmax, token by token, no KV cache, stopping at EOS."""
    ids = list(tokenizer(prompt)["input_ids"])
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new.append(nxt)
    return tokenizer.decode(new, skip_special_tokens=True)


REQUESTS = [
    LoglikRequest("Question: Who wrote the book?\nAnswer:", " The author wrote it in Paris."),
    LoglikRequest("The quick", " brown fox"),
    LoglikRequest("Basil Mahfouz Al-Kuwaiti was born in", " Kuwait City in 1972.", add_eos=False),
    LoglikRequest("A", " B"),
    LoglikRequest("Answer the question about the novel and its famous writer. The quick brown fox", " jumps"),
    LoglikRequest("", "The lazy dog."),
    LoglikRequest("The", ""),
]


def test_loglikelihood_matches_direct_loop(model, tokenizer) -> None:
    backend = HFBackend(model, tokenizer, batch_size=3, device="cpu")
    got = backend.loglikelihood(REQUESTS)
    assert len(got) == len(REQUESTS)
    for req, lp in zip(REQUESTS, got):
        assert lp.dtype == np.float64
        if req.context == "":
            continue  # the backend conditions an empty context on BOS; checked below
        want = direct_logprobs(model, tokenizer, req)
        assert lp.shape == want.shape
        np.testing.assert_allclose(lp, want, atol=1e-5, rtol=0)
    # "The" + "" scores only the EOS; empty context still yields one log-prob per continuation token
    assert got[-1].shape == (1,)
    n_cont = len(tokenizer("The lazy dog.", add_special_tokens=False)["input_ids"]) + 1
    assert got[5].shape == (n_cont,)


def test_loglikelihood_independent_of_batch_size(model, tokenizer) -> None:
    one = HFBackend(model, tokenizer, batch_size=1, device="cpu").loglikelihood(REQUESTS)
    many = HFBackend(model, tokenizer, batch_size=16, device="cpu").loglikelihood(REQUESTS)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


PROMPTS = ["Question: Who wrote the book?\nAnswer:", "The", "Basil Mahfouz Al-Kuwaiti was born", "A quick"]


def test_generate_matches_manual_greedy(model, tokenizer) -> None:
    backend = HFBackend(model, tokenizer, batch_size=3, device="cpu")
    max_new = [6, 9, 4, 7]
    got = backend.generate([GenRequest(p, n) for p, n in zip(PROMPTS, max_new)])
    want = [manual_greedy(model, tokenizer, p, n) for p, n in zip(PROMPTS, max_new)]
    assert got == want


def test_generate_cuts_at_stop_strings(model, tokenizer) -> None:
    backend = HFBackend(model, tokenizer, batch_size=2, device="cpu")
    full = backend.generate([GenRequest(p, 10) for p in PROMPTS])
    i, text = max(enumerate(full), key=lambda t: len(t[1]))
    assert len(text) >= 4
    stop = text[2:4]
    cut = backend.generate([GenRequest(PROMPTS[i], 10, stop=("never-there", stop))])[0]
    assert cut == text[:text.find(stop)]
    assert stop not in cut


def test_cut_at_stop_takes_earliest() -> None:
    assert cut_at_stop("a\nQuestion: b\n\nc", ("\n\n", "\nQuestion:")) == "a"
    assert cut_at_stop("abc", ()) == "abc"
    assert cut_at_stop("abc", ("",)) == "abc"


def test_pad_falls_back_to_eos_and_padding_side_kept(model, tokenizer, corpus) -> None:
    tok = train_bpe_tokenizer(corpus, 320)
    tok.pad_token = None
    tok.padding_side = "right"
    backend = make_backend("hf", model, tok, batch_size=4, device="cpu")
    assert "hf" in BACKENDS and backend.pad_id == tok.eos_token_id
    got = backend.loglikelihood(REQUESTS[:3])
    for req, lp in zip(REQUESTS[:3], got):
        np.testing.assert_allclose(lp, direct_logprobs(model, tokenizer, req), atol=1e-5, rtol=0)
    assert backend.generate([GenRequest(p, 5) for p in PROMPTS]) == [
        manual_greedy(model, tokenizer, p, 5) for p in PROMPTS]
    assert tok.padding_side == "right"


def test_training_flag_restored(model, tokenizer) -> None:
    model.train()
    try:
        HFBackend(model, tokenizer, batch_size=2, device="cpu").loglikelihood(REQUESTS[:2])
        assert model.training
    finally:
        model.eval()
