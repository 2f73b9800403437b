"""Models read from disk own aligned storage, as built or deep-copied ones do (bit-identical scoring)."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.models.text import _ALIGNMENT, build_builtin, load_pretrained, own_aligned, save_model
from harness.models.tokenizer import get_or_train_tokenizer


def test_loaded_weights_are_aligned_and_give_the_built_models_logits(tmp_path: Path) -> None:
    tokenizer = get_or_train_tokenizer(["a tiny corpus for a tiny tokenizer", "with two lines"], tmp_path / "tok")
    model = build_builtin("builtin:tiny-llama", len(tokenizer), seed=0).eval()
    path = save_model(model, tokenizer, tmp_path / "m")
    loaded, _ = load_pretrained(str(path))
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert all(t.data_ptr() % _ALIGNMENT == 0 for t in tensors if t.numel())
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)


def test_own_aligned_keeps_tied_weights_tied() -> None:
    lin = torch.nn.Linear(4, 4, bias=False)
    emb = torch.nn.Embedding(4, 4)
    emb.weight = lin.weight
    model = torch.nn.ModuleDict({"a": lin, "b": emb})
    storage = torch.empty(17, dtype=torch.float32)
    with torch.no_grad():
        lin.weight.data = storage[1:].view(4, 4)  # 4-byte offset: unaligned
    own_aligned(model)
    assert lin.weight is emb.weight and lin.weight.data_ptr() % _ALIGNMENT == 0
