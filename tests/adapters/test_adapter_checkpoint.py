"""PEFT-format adapter checkpoints: round trip, PEFT loading (plain LoRA, bounded, refused), clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.adapters import (
    adapted_layers,
    attach,
    load_adapter,
    load_as_peft_model,
    read_bound_config,
    save_adapter,
)
from harness.adapters.checkpoint import upgrade_adapter
from harness.adapters.format import BOUNDED_INIT_MARKER, BOUNDED_PEFT_TYPE
from harness.config import AdapterSpec
from harness.core.errors import DataError
from harness.models.text import build_builtin

# PEFT warns inside its own code (gradient checkpointing attribute; no config.json for a builtin base).
pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Could not find a config file:UserWarning"),
              pytest.mark.filterwarnings("ignore:Unable to fetch remote file:UserWarning")]

VOCAB = 64


def _model(arch: str):
    return build_builtin(arch, VOCAB, seed=0).eval()


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    return model(ids).logits


def _trained(arch: str, spec: AdapterSpec):
    model = _model(arch)
    attach(model, spec, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.3)
    return model


def _plain_lora_logits(arch: str, adapter_dir) -> torch.Tensor:
    """What plain LoRA (`W0 + (alpha/r) B A`) would compute from the saved factors."""
    model = _model(arch)
    cfg = read_bound_config(adapter_dir)
    attach_spec = AdapterSpec(bound="none", rank=cfg["rank"], alpha=cfg["alpha"])
    from harness.adapters import attach_to

    attach_to(model, cfg["modules"], attach_spec)
    state = load_file(adapter_dir / "adapter_model.safetensors")
    with torch.no_grad():
        for name, layer in adapted_layers(model).items():
            layer.lora_A.weight.copy_(state[f"base_model.model.{name}.lora_A.weight"])
            layer.lora_B.weight.copy_(state[f"base_model.model.{name}.lora_B.weight"])
    return _logits(model)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
def test_round_trip(tmp_path, arch):
    spec = AdapterSpec(bound="sine", rank=4, alpha=8.0, omega=3.0)
    model = _trained(arch, spec)
    out = save_adapter(model, tmp_path / "ad", spec, base_model=f"builtin:{arch}")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json",
                                                      "adapter_model.safetensors",
                                                      "bound_config.json"]  # no temp files left behind
    # World-readable, the weights too (not mkstemp's or safetensors' private 0600).
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}

    state = load_file(out / "adapter_model.safetensors")
    names = list(adapted_layers(model))
    assert set(state) == {f"base_model.model.{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert list(cfg) == sorted(cfg)  # written with sorted keys, as PEFT's own save_pretrained does
    # a type plain PEFT does not know, carrying the bound beside PEFT's own LoRA fields
    assert cfg["peft_type"] == "HARNESS_BOUNDED_LORA" == BOUNDED_PEFT_TYPE
    assert (cfg["bound"], cfg["omega"], cfg["clip_value"]) == ("sine", 3.0, 0.01)
    assert cfg["init_lora_weights"] == BOUNDED_INIT_MARKER  # vLLM's LoRA loader refuses it (it reads no peft_type)
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["bias"] == "none"
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and cfg["lora_dropout"] == 0.0
    assert sorted(cfg["target_modules"]) == sorted(names)
    assert cfg["fan_in_fan_out"] == (arch == "tiny-gpt2")
    assert cfg["base_model_name_or_path"] == f"builtin:{arch}"
    bcfg = read_bound_config(out)
    got = (bcfg["format_version"], bcfg["bound"], bcfg["omega"], bcfg["rank"], bcfg["alpha"], bcfg["modules"])
    assert got == (2, "sine", 3.0, 4, 8.0, names)
    assert "HARNESS_BOUNDED_LORA" in (out / "README.md").read_text()

    fresh = _model(arch)
    assert load_adapter(fresh, out) == spec
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2", "tiny-opt"])
def test_peft_loads_a_bound_none_adapter(tmp_path, arch):
    from peft import PeftModel

    spec = AdapterSpec(bound="none", rank=4, alpha=8.0)
    model = _trained(arch, spec)
    save_adapter(model, tmp_path, spec, base_model=f"builtin:{arch}")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["init_lora_weights"] is True
    assert not (tmp_path / "README.md").exists()
    peft_model = load_as_peft_model(_model(arch), tmp_path)
    assert isinstance(peft_model, PeftModel)
    torch.testing.assert_close(_logits(peft_model), _logits(model), atol=1e-5, rtol=1e-5)
    # and PeftModel.from_pretrained directly, with no harness code in the way
    direct = PeftModel.from_pretrained(_model(arch), str(tmp_path)).eval()
    torch.testing.assert_close(_logits(direct), _logits(model), atol=1e-5, rtol=1e-5)


#: Run in a fresh interpreter that never imports harness: plain PEFT and transformers on the saved files.
_PLAIN_PEFT = textwrap.dedent("""
    import sys
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, adapter_dir = sys.argv[1], sys.argv[2]
    loaders = {
        "PeftModel.from_pretrained": lambda: PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir),
        "PeftConfig.from_pretrained": lambda: PeftConfig.from_pretrained(adapter_dir),
        "transformers load_adapter": lambda: AutoModelForCausalLM.from_pretrained(base_dir).load_adapter(adapter_dir),
    }
    for name, load in loaders.items():
        try:
            load()
        except Exception as err:
            print(f"{name}: refused: {type(err).__name__}: {err}")
        else:
            print(f"{name}: LOADED")
""")


def test_plain_peft_refuses_a_bounded_adapter(tmp_path):
    spec = AdapterSpec(bound="sine", rank=4, alpha=8.0, omega=3.0)
    _model("tiny-llama").save_pretrained(tmp_path / "base")
    save_adapter(_trained("tiny-llama", spec), tmp_path / "ad", spec, base_model=str(tmp_path / "base"))
    run = subprocess.run([sys.executable, "-c", _PLAIN_PEFT, str(tmp_path / "base"), str(tmp_path / "ad")],
                         capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 3, run.stdout
    for line in lines:  # every plain loader refuses, naming the adapter type it does not know
        assert "refused: KeyError: 'HARNESS_BOUNDED_LORA'" in line, line


@pytest.mark.parametrize("arch,bound", [("tiny-llama", "sine"), ("tiny-gpt2", "sine"), ("tiny-opt", "sine"),
                                        ("tiny-llama", "tanh"), ("tiny-llama", "clip")])
def test_load_as_peft_model_computes_the_bound(tmp_path, arch, bound):
    from peft import PeftModel

    spec = AdapterSpec(bound=bound, rank=4, alpha=8.0, omega=3.0, clip_value=0.05)
    model = _trained(arch, spec)
    save_adapter(model, tmp_path, spec, base_model=f"builtin:{arch}")
    want = _logits(model)
    peft_model = load_as_peft_model(_model(arch), tmp_path).eval()
    assert isinstance(peft_model, PeftModel)
    torch.testing.assert_close(_logits(peft_model), want, atol=1e-5, rtol=0)
    # ... which is not what plain LoRA on the same factors computes
    assert float((_plain_lora_logits(arch, tmp_path) - want).abs().max()) > 0.05
    # PEFT's adapter switch and its mixed-batch path go through the bound too
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), peft_model.disable_adapter():
        base = peft_model(ids).logits
    torch.testing.assert_close(base, _logits(_model(arch)), atol=0, rtol=0)
    if arch != "tiny-opt":  # OPT flattens the batch before its MLP, which PEFT's mixed batches cannot follow
        with torch.no_grad():
            mixed = peft_model(ids, adapter_names=["default", "__base__"]).logits
        torch.testing.assert_close(mixed[0], want[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(mixed[1], base[1], atol=0, rtol=0)
    # PEFT's merge is the harness's exact merge
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(_logits(merged), want, atol=1e-5, rtol=0)


def test_register_with_peft_lets_plain_peft_load_the_bound(tmp_path):
    from peft import PeftModel
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    from harness.adapters.peft_bounded import PEFT_TYPE, is_registered_with_peft, register_with_peft

    spec = AdapterSpec(bound="sine", rank=4, alpha=8.0, omega=3.0)
    model = _trained("tiny-gpt2", spec)
    save_adapter(model, tmp_path / "ad", spec, base_model="builtin:tiny-gpt2")
    assert not is_registered_with_peft()
    with pytest.raises(KeyError, match=PEFT_TYPE):
        PeftModel.from_pretrained(_model("tiny-gpt2"), str(tmp_path / "ad"))
    register_with_peft()
    try:
        peft_model = PeftModel.from_pretrained(_model("tiny-gpt2"), str(tmp_path / "ad")).eval()
        torch.testing.assert_close(_logits(peft_model), _logits(model), atol=1e-5, rtol=0)
        # saved again by PEFT: still the bounded type, and the harness loads it without bound_config.json
        peft_model.save_pretrained(tmp_path / "resaved")
        assert not (tmp_path / "resaved" / "bound_config.json").exists()
        assert json.loads((tmp_path / "resaved" / "adapter_config.json").read_text())["peft_type"] == PEFT_TYPE
        fresh = _model("tiny-gpt2")
        assert load_adapter(fresh, tmp_path / "resaved") == spec
        torch.testing.assert_close(_logits(fresh), _logits(model), atol=0, rtol=0)
    finally:
        PEFT_TYPE_TO_CONFIG_MAPPING.pop(PEFT_TYPE, None)


def _as_format_version_1(adapter_dir) -> None:
    """Rewrite a saved bounded adapter as the harness wrote it before format version 2 (peft_type LORA)."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    for key in ("bound", "omega", "clip_value"):
        cfg.pop(key)
    cfg["peft_type"], cfg["init_lora_weights"] = "LORA", True
    (adapter_dir / "adapter_config.json").write_text(json.dumps(cfg))
    bcfg = json.loads((adapter_dir / "bound_config.json").read_text())
    bcfg["format_version"] = 1
    (adapter_dir / "bound_config.json").write_text(json.dumps(bcfg))
    (adapter_dir / "README.md").unlink()


def test_format_version_1_adapters_still_load_and_upgrade(tmp_path):
    from peft import PeftModel

    spec = AdapterSpec(bound="sine", rank=4, alpha=8.0, omega=3.0)
    model = _trained("tiny-llama", spec)
    save_adapter(model, tmp_path, spec, base_model="builtin:tiny-llama")
    _as_format_version_1(tmp_path)
    want = _logits(model)
    fresh = _model("tiny-llama")
    assert load_adapter(fresh, tmp_path) == spec
    torch.testing.assert_close(_logits(fresh), want, atol=0, rtol=0)
    torch.testing.assert_close(_logits(load_as_peft_model(_model("tiny-llama"), tmp_path).eval()), want,
                               atol=1e-5, rtol=0)

    assert upgrade_adapter(tmp_path) is True
    assert upgrade_adapter(tmp_path) is False
    assert read_bound_config(tmp_path)["format_version"] == 2
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["init_lora_weights"], cfg["bound"]) == (BOUNDED_PEFT_TYPE, BOUNDED_INIT_MARKER,
                                                                          "sine")
    with pytest.raises(KeyError, match=BOUNDED_PEFT_TYPE):  # plain PEFT now refuses it
        PeftModel.from_pretrained(_model("tiny-llama"), str(tmp_path))
    fresh = _model("tiny-llama")
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(_logits(fresh), want, atol=0, rtol=0)


def test_load_errors(tmp_path):
    spec = AdapterSpec(bound="tanh")
    with pytest.raises(DataError, match="bound_config.json is missing"):
        load_adapter(_model("tiny-llama"), tmp_path)
    save_adapter(_trained("tiny-llama", spec), tmp_path, spec, base_model="builtin:tiny-llama")

    with pytest.raises(DataError, match="no module.*different base model"):  # wrong architecture
        load_adapter(_model("tiny-gpt2"), tmp_path)
    with pytest.raises(DataError, match="no module.*different base model"):
        load_as_peft_model(_model("tiny-gpt2"), tmp_path)
    wider = build_builtin("tiny-llama", VOCAB, seed=0)
    wider.config.intermediate_size = 256
    from transformers import AutoModelForCausalLM

    wider = AutoModelForCausalLM.from_config(wider.config)
    with pytest.raises(DataError, match=r"gate_proj is 256x128 but the adapter has .*different base model"):
        load_adapter(wider, tmp_path)
    assert not adapted_layers(wider)  # left untouched

    good = (tmp_path / "adapter_model.safetensors").read_bytes()
    (tmp_path / "adapter_model.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="adapter_model.safetensors is not a readable safetensors file"):
        load_adapter(_model("tiny-llama"), tmp_path)

    state = load_file_bytes(good)
    state.pop(next(iter(state)))
    save_file(state, tmp_path / "adapter_model.safetensors")
    model = _model("tiny-llama")
    with pytest.raises(DataError, match="missing"):
        load_adapter(model, tmp_path)
    assert not adapted_layers(model)  # left untouched

    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(DataError, match="adapter_model.safetensors is missing"):
        load_adapter(_model("tiny-llama"), tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_adapter_weights_name_the_file(tmp_path, keep):
    import os

    spec = AdapterSpec(bound="sine")
    save_adapter(_trained("tiny-llama", spec), tmp_path, spec, base_model="builtin:tiny-llama")
    weights = tmp_path / "adapter_model.safetensors"
    os.truncate(weights, int(weights.stat().st_size * keep))
    model = _model("tiny-llama")
    with pytest.raises(DataError, match=f"{weights} is not a readable safetensors file .truncated or"):
        load_adapter(model, tmp_path)
    assert not adapted_layers(model)  # left untouched


def test_truncated_bound_config_names_the_file(tmp_path):
    spec = AdapterSpec(bound="sine")
    save_adapter(_trained("tiny-llama", spec), tmp_path, spec, base_model="builtin:tiny-llama")
    path = tmp_path / "bound_config.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(DataError, match=f"{path} is not valid JSON .truncated or edited"):
        load_adapter(_model("tiny-llama"), tmp_path)


def load_file_bytes(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


def test_load_refuses_a_model_that_already_has_adapters(tmp_path):
    spec = AdapterSpec(bound="sine")
    model = _trained("tiny-llama", spec)
    save_adapter(model, tmp_path, spec, base_model="builtin:tiny-llama")
    with pytest.raises(ValueError, match="already has bounded adapters"):
        load_adapter(model, tmp_path)
