import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lmforge.errors import UserError
from lmforge.models import build
from lmforge.models.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_state_dict,
    mark_trainable,
    merge_lora,
)

ALL = ("c_attn", "c_proj", "c_fc")


def gpt(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build(tiny_config(**{"vocab_size": 64, **kw})).eval()


def lora_gpt(seed: int = 0, targets=ALL, rank: int = 4, **kw) -> nn.Module:
    model = gpt(seed, **kw)
    apply_lora(model, LoRAConfig(rank=rank, targets=targets))
    return model


def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    """B is zero at init; give it values so that merge / save / load have something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(seed))


def test_init_output_equals_base():
    model, x = gpt(), ids()
    ref = model(x)
    names = apply_lora(model, LoRAConfig(rank=4, targets=ALL))
    assert names == [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(model(x), ref)


def test_patterns_select_modules():
    def names(targets):
        return apply_lora(gpt(), LoRAConfig(targets=targets))

    assert names(("attn.c_proj",)) == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    assert names(("mlp.*",)) == [f"transformer.h.{i}.mlp.{m}" for i in range(2) for m in ("c_fc", "c_proj")]
    assert names(("h.1.attn.c_attn", "c_attn")) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    # '*' takes every Linear but skips the tied lm_head; an untied head is taken
    assert len(names(("*",))) == 8
    assert "lm_head" in apply_lora(gpt(tie_weights=False), LoRAConfig(targets=("*",)))


def test_training_moves_only_adapters():
    model, x = lora_gpt(), ids()
    trainable, total = mark_trainable(model)
    lora_numel = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert trainable == lora_numel and total == sum(p.numel() for p in model.parameters())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # frozen parameters included on purpose
    model.train()
    losses = []
    for _ in range(5):
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 64), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == ("lora_" in n), n
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_mark_trainable_extra_and_bad_pattern():
    model = lora_gpt()
    lora_numel = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    trainable, _ = mark_trainable(model, extra=("ln_f.*",))
    assert trainable == lora_numel + 2 * 32
    assert model.transformer.ln_f.weight.requires_grad and not model.transformer.wte.weight.requires_grad
    with pytest.raises(UserError, match="'head.*' matches no parameter"):
        mark_trainable(model, extra=("head.*",))


def test_merge_gives_plain_model_with_same_outputs_and_keys():
    plain_keys = list(gpt().state_dict())
    model, x = lora_gpt(), ids()
    randomize_adapters(model)
    out = model(x)
    merged = merge_lora(copy.deepcopy(model))
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert list(merged.state_dict()) == plain_keys
    torch.testing.assert_close(merged(x), out, atol=1e-5, rtol=0)
    fresh = gpt(seed=5)  # loads as an ordinary model
    fresh.load_state_dict(merged.state_dict())
    torch.testing.assert_close(fresh(x), out, atol=1e-5, rtol=0)


def test_merge_unmerge_roundtrip():
    model, x = lora_gpt(), ids()
    randomize_adapters(model)
    base_w = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("base.weight")}
    out = model(x)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()
            m.merge()  # idempotent
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=0)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()
    for n, p in model.named_parameters():
        if n in base_w:
            torch.testing.assert_close(p, base_w[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=0)


def test_state_dict_roundtrip():
    model, x = lora_gpt(), ids()
    randomize_adapters(model)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(1.5)
    sd = lora_state_dict(model)
    assert len(sd) == 16 and all(k.endswith((".lora_A", ".lora_B")) for k in sd)
    sd = lora_state_dict(model, extra=("ln_f.*",))
    assert set(sd) - set(lora_state_dict(model)) == {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    fresh = lora_gpt()  # same base weights (same seed), fresh adapters
    assert not torch.equal(fresh(x), model(x))
    load_lora_state_dict(fresh, sd, extra=("ln_f.*",))
    assert torch.equal(fresh(x), model(x))


def test_load_errors_name_keys():
    sd = lora_state_dict(lora_gpt())
    with pytest.raises(UserError, match=r"missing keys: transformer\.h\.0\.attn\.c_attn\.lora_A"):
        load_lora_state_dict(lora_gpt(), {k: v for k, v in sd.items() if k != "transformer.h.0.attn.c_attn.lora_A"})
    with pytest.raises(UserError, match="unexpected keys: bogus"):
        load_lora_state_dict(lora_gpt(), {**sd, "bogus": torch.zeros(1)})
    with pytest.raises(UserError, match=r"c_attn\.lora_A has shape \(4, 32\), the model expects \(8, 32\)"):
        load_lora_state_dict(lora_gpt(rank=8), sd)
    with pytest.raises(UserError, match="no adapters"):
        load_lora_state_dict(gpt(), sd)


def test_bad_targets_list_real_names():
    with pytest.raises(UserError, match=r"no nn.Linear matches 'xyz' \(Linear modules are: transformer\.h\.\*\.attn\.c_attn, .*, lm_head\)"):
        apply_lora(gpt(), LoRAConfig(targets=("c_attn", "xyz")))
    model = lora_gpt(targets=("c_attn",))
    with pytest.raises(UserError, match="already have LoRA"):
        apply_lora(model, LoRAConfig(targets=("c_attn",)))


def test_tied_head_refused():
    model = gpt()
    with pytest.raises(UserError, match=r"'lm_head' shares its weight with transformer\.wte\.weight \(tied\)"):
        apply_lora(model, LoRAConfig(targets=("lm_head",)))
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(UserError, match="tied"):
        apply_lora(gpt(), LoRAConfig(targets=("lm_*",)))  # a pattern that only hits the tied head


@pytest.mark.parametrize("kw, field", [
    ({"rank": 0}, "lora.rank"), ({"rank": 2.5}, "lora.rank"), ({"alpha": 0.0}, "lora.alpha"),
    ({"dropout": 1.0}, "lora.dropout"), ({"dropout": -0.1}, "lora.dropout"), ({"targets": ()}, "lora.targets"),
])
def test_bad_config(kw, field):
    with pytest.raises(UserError, match=field):
        LoRAConfig(**kw)


def test_config_targets_from_string():
    assert LoRAConfig(targets="c_attn, mlp.*").patterns == ("c_attn", "mlp.*")
    assert LoRAConfig(targets=["c_fc"]).patterns == ("c_fc",)


def test_nested_containers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(2)])
            self.heads = nn.ModuleDict({"a": nn.Linear(8, 3), "b": nn.Linear(8, 2)})

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return torch.cat([self.heads["a"](x), self.heads["b"](x)], -1)

    net, x = Net(), torch.randn(4, 8)
    ref = net(x)
    assert apply_lora(net, LoRAConfig(rank=2, targets=("layers.*", "heads.a"))) == ["layers.0.0", "layers.1.0", "heads.a"]
    assert isinstance(net.layers[1][0], LoRALinear) and isinstance(net.heads["a"], LoRALinear)
    assert type(net.heads["b"]) is nn.Linear
    assert torch.equal(net(x), ref)


def test_dropout_only_in_training():
    model, x = gpt(), ids()
    apply_lora(model, LoRAConfig(rank=4, dropout=0.5))
    randomize_adapters(model)
    out = model(x)
    model.train()
    assert not torch.equal(model(x), out)
    model.eval()
    assert torch.equal(model(x), out)


def test_bf16():
    model, x = lora_gpt(), ids()
    randomize_adapters(model)
    mark_trainable(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert model.transformer.h[0].attn.c_attn.lora_A.grad is not None
    # a bf16 model gets bf16 adapters on the same device
    m16 = gpt().to(torch.bfloat16)
    apply_lora(m16, LoRAConfig(targets=ALL))
    assert m16.transformer.h[0].mlp.c_fc.lora_B.dtype == torch.bfloat16
    assert m16(x).dtype == torch.bfloat16
    merge_lora(m16)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 6), st.floats(0.5, 64.0), st.booleans())
def test_merge_matches_forward_any_shape(n_in, n_out, rank, alpha, bias):
    torch.manual_seed(0)
    lin = LoRALinear(nn.Linear(n_in, n_out, bias=bias), rank=rank, alpha=alpha)
    nn.init.normal_(lin.lora_B)
    x = torch.randn(2, 3, n_in)
    out = lin(x)
    merged = merge_lora(nn.Sequential(lin))[0]
    assert type(merged) is nn.Linear and merged.weight.shape == (n_out, n_in)
    torch.testing.assert_close(merged(x), out, atol=1e-4, rtol=1e-5)
