"""The baseline objectives' losses against hand computations on tiny fixed inputs, and against the formulas of
their reference files (re-expressed here as tensor code, each cited)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.data.encode import collate, encode_training_pairs
from harness.objectives import IGNORE, OBJECTIVES, ImageBatch, TokenBatch, make_objective
from harness.spec import objective_spec

pytestmark = pytest.mark.usefixtures("one_thread")

V = 7


def _batch(seed: int = 0) -> tuple[torch.Tensor, TokenBatch]:
    """Two sequences of 5 tokens: 2 prompt tokens, then the answer; the second is padded at its end."""
    torch.manual_seed(seed)
    logits = torch.randn(2, 5, V)
    ids = torch.randint(0, V, (2, 5))
    labels = ids.clone()
    labels[:, :2] = IGNORE
    labels[1, 4] = IGNORE
    return logits, TokenBatch(ids, torch.ones_like(ids), labels)


def out(logits: torch.Tensor, hidden: tuple[torch.Tensor, ...] | None = None) -> SimpleNamespace:
    return SimpleNamespace(logits=logits, hidden_states=hidden)


def _tokens(batch: TokenBatch) -> list[tuple[int, int, int]]:
    """(row, position predicting the token, the token) of every scored answer token, by a direct loop."""
    return [(b, t - 1, int(batch.labels[b, t])) for b in range(batch.labels.size(0))
            for t in range(1, batch.labels.size(1)) if batch.labels[b, t] != IGNORE]


def _softmax(row: torch.Tensor) -> list[float]:
    e = [math.exp(float(v)) for v in row]
    return [x / sum(e) for x in e]


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """open-unlearning's `logits[..., :-1, :]`, `labels[..., 1:]`, flattened."""
    return logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)


# --- IdkDPO -----------------------------------------------------------------------------------------------------

def test_idkdpo_examples_carry_refusal_then_answer_and_collate_continuation_major() -> None:
    obj = make_objective(objective_spec(name="idkdpo"))
    preferred, rejected = obj.forget_answer({"answer": "Paris"}, 3)
    assert rejected == "Paris" and preferred != "Paris"

    class Tok:  # one id per character, BOS 1 and EOS 2
        eos_token_id = 2

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
            return {"input_ids": ([1] if add_special_tokens else []) + [3 + ord(c) % 50 for c in text]}

    enc = encode_training_pairs(Tok(), [("Q1", ("ab", "cde")), ("Q2", ("f", "gh"))], max_length=32)
    batch = collate(enc, pad_id=0)
    assert batch.input_ids.shape[0] == 4  # [preferred of both examples; rejected of both]
    scored = [[int(t) for t in row if t != IGNORE] for row in batch.labels]
    char = [3 + ord(c) % 50 for c in "abcdefgh"]
    assert scored == [[char[0], char[1], 2], [char[5], 2], [char[2], char[3], char[4], 2], [char[6], char[7], 2]]


def test_idkdpo_matches_hand_computation_and_open_unlearning_compute_dpo_loss() -> None:
    torch.manual_seed(3)
    logits, ref = torch.randn(4, 5, V), torch.randn(4, 5, V)
    ids = torch.randint(0, V, (4, 5))
    labels = ids.clone()
    labels[:, :2] = IGNORE
    labels[3, 4] = IGNORE
    batch = TokenBatch(ids, torch.ones_like(ids), labels)
    beta = 0.1
    obj = make_objective(objective_spec(name="idkdpo", beta=beta))
    got = float(obj.forget_loss(out(logits), batch, out(ref)))

    def seq_logp(lg: torch.Tensor, b: int) -> float:
        return sum(math.log(_softmax(lg[b, t])[y]) for row, t, y in _tokens(batch) if row == b)

    expected = 0.0
    for i in range(2):  # example i: preferred in row i, rejected in row i + 2
        win = seq_logp(logits, i) - seq_logp(ref, i)
        lose = seq_logp(logits, i + 2) - seq_logp(ref, i + 2)
        expected += -2 / beta * math.log(1 / (1 + math.exp(-beta * (win - lose)))) / 2
    assert got == pytest.approx(expected, rel=1e-5)

    # open-unlearning src/trainer/utils.py compute_batch_nll / compute_dpo_loss: summed token NLLs,
    # win_log_ratio = -(win_loss - win_ref_loss), -2/beta * logsigmoid(beta * (win - lose)).mean().
    def batch_nll(lg: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(lg[:, :-1].transpose(-1, -2), lab[:, 1:], ignore_index=IGNORE, reduction="none").sum(-1)

    win_ratio = -(batch_nll(logits[:2], labels[:2]) - batch_nll(ref[:2], labels[:2]))
    lose_ratio = -(batch_nll(logits[2:], labels[2:]) - batch_nll(ref[2:], labels[2:]))
    reference = float(-2 / beta * F.logsigmoid(beta * (win_ratio - lose_ratio)).mean())
    assert got == pytest.approx(reference, rel=1e-5)
    assert OBJECTIVES.get("idkdpo").modalities == {"text"}


# --- RMU --------------------------------------------------------------------------------------------------------

def _rmu_inputs() -> tuple[TokenBatch, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    _, batch = _batch()
    gen = torch.Generator().manual_seed(5)
    hidden = tuple(torch.randn(2, 5, 4, generator=gen) for _ in range(4))  # embeddings + 3 layers
    ref_hidden = tuple(h + 0.5 * torch.randn(h.shape, generator=gen) for h in hidden)
    return batch, hidden, ref_hidden


def test_rmu_forget_and_retain_terms_match_hand_computation() -> None:
    batch, hidden, ref_hidden = _rmu_inputs()
    obj = make_objective(objective_spec(name="rmu", layer=1, steering_coeff=2.0))
    control = torch.tensor([0.5, -1.0, 0.25, 2.0])
    obj.apply_prepared(torch.nn.Identity(), {"control": control})
    h, h_ref = hidden[2], ref_hidden[2]  # output of decoder layer 1

    def per_example(a: torch.Tensor, target) -> float:
        total = 0.0
        for b in range(2):
            positions = [t for t in range(5) if batch.labels[b, t] != IGNORE]  # unshifted, as the reference
            sq = [sum(float(a[b, t, d] - target(b, t, d)) ** 2 for d in range(4)) / 4 for t in positions]
            total += sum(sq) / len(sq)
        return total / 2

    got_f = float(obj.forget_loss(out(torch.zeros(2, 5, V), hidden), batch, None))
    assert got_f == pytest.approx(per_example(h, lambda b, t, d: control[d]), rel=1e-5)
    got_r = float(obj.retain_loss(out(torch.zeros(2, 5, V), hidden), batch, out(torch.zeros(2, 5, V), ref_hidden)))
    assert got_r == pytest.approx(per_example(h, lambda b, t, d: h_ref[b, t, d]), rel=1e-5)
    assert obj.retain_needs_reference and not obj.retain_unit_mean and obj.needs_hidden_states


def test_rmu_matches_open_unlearning_compute_activation_loss() -> None:
    # open-unlearning src/trainer/unlearn/rmu.py compute_activation_loss: mse(reduction=none) * mask,
    # .mean(dim=2).sum(dim=1), / mask.sum(-1, keepdim=True), .mean(); control vector expanded to (b, s, d).
    # Its [b] / [b, 1] division broadcasts to b x b, so it equals the per-example mean its comments describe
    # only when every example has as many answer tokens: compare on such a batch, and check the broadcast.
    batch, hidden, _ = _rmu_inputs()
    obj = make_objective(objective_spec(name="rmu", layer=0))
    control = torch.tensor([1.0, 0.0, -1.0, 0.5])
    obj.apply_prepared(torch.nn.Identity(), {"control": control})
    h = hidden[1]

    def reference(labels: torch.Tensor) -> float:
        mask = labels != IGNORE
        sq = F.mse_loss(h, control.view(1, 1, -1).expand_as(h), reduction="none")
        per = (sq * mask.unsqueeze(-1).expand_as(sq)).mean(dim=2).sum(dim=1)
        return float((per / mask.sum(-1, keepdim=True)).mean())

    same_length = batch.with_targets(batch.input_ids.masked_fill(torch.arange(5) < 2, IGNORE))
    got = float(obj.forget_loss(out(torch.zeros(2, 5, V), hidden), same_length, None))
    assert got == pytest.approx(reference(same_length.labels), rel=1e-6)
    mask = (batch.labels != IGNORE).float()
    per = ((h - control).pow(2).mean(-1) * mask).sum(-1)
    assert reference(batch.labels) == pytest.approx(float(per.mean() * (1 / mask.sum(-1)).mean()), rel=1e-6)
    assert float(obj.forget_loss(out(torch.zeros(2, 5, V), hidden), batch, None)) == pytest.approx(
        float((per / mask.sum(-1)).mean()), rel=1e-6)


def test_rmu_control_vector_has_the_steering_norm_and_depends_on_the_seed_only() -> None:
    from harness.objectives import PrepareContext

    obj = make_objective(objective_spec(name="rmu", steering_coeff=6.5))
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=16))
    make = lambda seed: obj.prepare(PrepareContext(model, torch.device("cpu"), seed))["control"]  # noqa: E731
    c0, c1 = make(0), make(1)
    assert float(c0.norm()) == pytest.approx(6.5, rel=1e-6) and (c0 > 0).all()  # u ~ U[0, 1), as torch.rand
    assert torch.equal(c0, make(0)) and not torch.equal(c0, c1)


def test_rmu_rejects_a_layer_at_or_above_the_last() -> None:
    batch, hidden, _ = _rmu_inputs()  # 3 decoder layers: 0 and 1 are usable
    obj = make_objective(objective_spec(name="rmu", layer=2))
    obj.apply_prepared(torch.nn.Identity(), {"control": torch.zeros(4)})
    with pytest.raises(ValueError, match="objective.layer 2"):
        obj.forget_loss(out(torch.zeros(2, 5, V), hidden), batch, None)


# --- UNDIAL, WGA, SatImp, CE-U, IHL -----------------------------------------------------------------------------

def test_undial_matches_hand_computation_and_the_reference_on_answer_tokens() -> None:
    logits, batch = _batch()
    ref = logits + torch.randn_like(logits)
    beta = 10.0
    obj = make_objective(objective_spec(name="undial", beta=beta))
    assert obj.options.w_retain == 0.0 and not obj.options.uses_retain  # the reference's alpha = 0
    got = float(obj.forget_loss(out(logits), batch, out(ref)))
    ces = []
    for b, t, y in _tokens(batch):
        target = _softmax(ref[b, t] - beta * F.one_hot(torch.tensor(y), V))
        logp = [math.log(p) for p in _softmax(logits[b, t])]
        ces.append(-sum(q * lp for q, lp in zip(target, logp)))
    assert got == pytest.approx(sum(ces) / len(ces), rel=1e-5)

    # open-unlearning src/trainer/utils.py compute_undial_loss: mask = one-hot of the shifted labels, teacher
    # logits - mask * beta, softmax, CrossEntropyLoss(reduction="none") against the soft labels, then a mean
    # (restricted here to the answer tokens; see undial.py).
    lg, lab = _shifted(logits, batch.labels)
    tl = ref[:, :-1].reshape(-1, V)
    keep = lab != IGNORE
    soft = F.softmax(tl[keep] - F.one_hot(lab[keep], V) * beta, dim=-1)
    assert got == pytest.approx(float(F.cross_entropy(lg[keep], soft, reduction="none").mean()), rel=1e-5)


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_wga_matches_hand_computation_and_compute_wga_loss(beta: float) -> None:
    logits, batch = _batch()
    got = float(make_objective(objective_spec(name="wga", beta=beta)).forget_loss(out(logits), batch, None))
    terms = [(p := _softmax(logits[b, t])[y]) ** beta * -math.log(p) for b, t, y in _tokens(batch)]
    assert got == pytest.approx(-sum(terms) / len(terms), rel=1e-5)
    # open-unlearning compute_wga_loss: weight_ce = exp(-lm_loss).detach() ** beta;
    # -(weight_ce * lm_loss)[shift_labels != -100].mean()
    lg, lab = _shifted(logits, batch.labels)
    ce = F.cross_entropy(lg, lab, ignore_index=IGNORE, reduction="none")
    assert got == pytest.approx(float(-((-ce).exp() ** beta * ce)[lab != IGNORE].mean()), rel=1e-5)


def test_satimp_matches_hand_computation_compute_satimp_loss_and_its_config() -> None:
    logits, batch = _batch()
    obj = make_objective(objective_spec(name="satimp"))
    assert (obj.options.beta1, obj.options.beta2, obj.options.w_forget, obj.options.w_retain) == (5.0, 1.0, 0.1, 1.0)
    got = float(obj.forget_loss(out(logits), batch, None))
    terms = [(p := _softmax(logits[b, t])[y]) ** 5 * (1 - p) * -math.log(p) for b, t, y in _tokens(batch)]
    assert got == pytest.approx(-sum(terms) / len(terms), rel=1e-5)
    # open-unlearning compute_satimp_loss: weight_sat = p ** beta1, weight_imp = (1 - p) ** beta2
    lg, lab = _shifted(logits, batch.labels)
    ce = F.cross_entropy(lg, lab, ignore_index=IGNORE, reduction="none")
    p = (-ce).exp()
    assert got == pytest.approx(float(-((p ** 5 * (1 - p)) * ce)[lab != IGNORE].mean()), rel=1e-5)


def test_ceu_skips_the_first_answer_token_and_matches_cross_entropy_unlearning_loss() -> None:
    logits, batch = _batch()
    obj = make_objective(objective_spec(name="ceu"))
    assert obj.options.retain_loss == "none" and obj.options.ignore_first_n_answer_tokens == 1
    got = float(obj.forget_loss(out(logits), batch, None))
    tokens = _tokens(batch)
    kept = [tok for i, tok in enumerate(tokens) if i > 0 and tokens[i - 1][0] == tok[0]]  # drop each row's first
    assert len(kept) == len(tokens) - 2 and obj.forget_units(batch) == len(kept)
    ces = []
    for b, t, y in kept:
        target = _softmax(torch.cat([logits[b, t, :y], torch.tensor([-1e30]), logits[b, t, y + 1:]]))
        logp = [math.log(p) for p in _softmax(logits[b, t])]
        ces.append(-sum(q * lp for q, lp in zip(target, logp)))
    assert got == pytest.approx(sum(ces) / len(ces), rel=1e-5)
    # open-unlearning src/trainer/unlearn/ceu.py compute_batch_ceu: labels masked where
    # valid.cumsum(-1) <= n, shifted; target = softmax(logits.detach() with the label's logit = -inf).
    valid = batch.labels != IGNORE
    lab = batch.labels.masked_fill((valid.cumsum(-1) <= 1) & valid, IGNORE)[:, 1:].reshape(-1)
    lg = logits[:, :-1].reshape(-1, V)
    m = lab != IGNORE
    target = lg[m].detach().clone().scatter_(-1, lab[m].unsqueeze(-1), float("-inf")).softmax(-1)
    assert got == pytest.approx(float(F.cross_entropy(lg[m], target)), rel=1e-5)


def test_loku_inverted_hinge_matches_hand_computation_and_the_crammer_singer_hinge() -> None:
    logits, batch = _batch()
    obj = make_objective(objective_spec(name="loku"))
    got = float(obj.forget_loss(out(logits), batch, None))
    terms = []
    for b, t, y in _tokens(batch):
        p = _softmax(logits[b, t])
        terms.append(max(0.0, 1 + p[y] - max(q for v, q in enumerate(p) if v != y)))
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # csm9493/efficient-llm-unlearning TOFU/dataloader.py _custom_multiclass_hinge_loss_update (crammer-singer,
    # alpha 1): preds = softmax, margin = preds[target] - max(preds[~target]), clamp(alpha + margin, 0), mean.
    lg, lab = _shifted(logits, batch.labels)
    preds = lg[lab != IGNORE].softmax(1)
    target = F.one_hot(lab[lab != IGNORE], V).bool()
    margin = preds[target] - preds[~target].view(preds.shape[0], -1).max(dim=1)[0]
    assert got == pytest.approx(float((1.0 + margin).clamp(0).mean()), rel=1e-5)


# --- FT, l1-sparse, RL ------------------------------------------------------------------------------------------

def test_ft_has_no_forget_gradient_and_logs_the_forget_nll() -> None:
    logits, batch = _batch()
    logits.requires_grad_(True)
    obj = make_objective(objective_spec(name="ft"))
    loss = obj.forget_loss(out(logits), batch, None)
    assert not loss.requires_grad and obj.options.w_forget == 0.0 and obj.options.retain_loss == "nll"
    nll = [-math.log(_softmax(logits[b, t].detach())[y]) for b, t, y in _tokens(batch)]
    assert float(loss) == pytest.approx(sum(nll) / len(nll), rel=1e-5)


@pytest.mark.parametrize("on", ["weight", "update"])
def test_l1_sparse_penalty_is_the_decayed_l1_of_the_adapted_weights(on: str) -> None:
    from harness.adapters import adapted_layers, attach
    from harness.config import AdapterSpec
    from harness.models.text import build_builtin

    model = build_builtin("tiny-llama", 32, seed=0)
    attach(model, AdapterSpec(bound="sine", rank=2, omega=3.0), seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen))
    obj = make_objective(objective_spec(name="l1_sparse", gamma=0.01, on=on))
    got = float(obj.penalty(model, progress=0.25).detach())
    total = 0.0
    for layer in adapted_layers(model).values():
        b, a = layer.lora_B.weight, layer.lora_A.weight
        delta = layer.bound.scale * torch.sin(3.0 * (b @ a))
        w = layer.base_layer.weight + delta if on == "weight" else delta
        total += float(w.abs().sum())
    assert got == pytest.approx(0.01 * 0.75 * total, rel=1e-5)
    assert float(obj.penalty(model, progress=1.0)) == 0.0  # decayed to 0 at the end, as the reference's schedule


def test_rl_labels_are_fixed_per_seed_uniform_over_classes_and_trained_with_cross_entropy() -> None:
    obj = make_objective(objective_spec(name="rl"))
    labels = np.full(2000, 3)
    a, b, c = obj.forget_labels(labels, 10, 0), obj.forget_labels(labels, 10, 0), obj.forget_labels(labels, 10, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and a.dtype == labels.dtype
    counts = np.bincount(a, minlength=10)
    assert counts.min() > 150 and a.min() >= 0 and a.max() <= 9  # every class, the true one included
    logits = torch.randn(4, 10)
    batch = ImageBatch(torch.zeros(4, 3, 2, 2), torch.tensor(a[:4]))
    assert float(obj.forget_loss(out(logits), batch, None)) == pytest.approx(
        float(F.cross_entropy(logits, torch.tensor(a[:4]))), rel=1e-6)
    assert OBJECTIVES.get("rl").modalities == {"image"} == OBJECTIVES.get("salun").modalities


def test_defaults_follow_the_references() -> None:
    want = {
        "idkdpo": {"beta": 0.1, "w_forget": 1.0, "w_retain": 1.0, "retain_loss": "nll"},
        "rmu": {"layer": 7, "steering_coeff": 2.0, "retain_loss": "embed_diff", "w_forget": 1.0, "w_retain": 1.0},
        "undial": {"beta": 10.0, "w_retain": 0.0},
        "wga": {"beta": 1.0, "w_forget": 1.0, "w_retain": 1.0, "retain_loss": "nll"},
        "satimp": {"beta1": 5.0, "beta2": 1.0, "w_forget": 0.1, "w_retain": 1.0},
        "ceu": {"ignore_first_n_answer_tokens": 1, "retain_loss": "none"},
        "loku": {"fila": True, "w_forget": 1.0, "w_retain": 1.0, "retain_loss": "nll"},
        "salun": {"fraction": 0.5},
        "l1_sparse": {"gamma": 5e-4, "on": "weight", "w_forget": 0.0, "retain_loss": "nll"},
    }
    for name, fields in want.items():
        opts = objective_spec(name=name)
        assert {k: getattr(opts, k) for k in fields} == fields, name
