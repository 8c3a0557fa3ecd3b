"""Every trainable coordinate of the LMs has a real gradient (issue 22).

A coordinate whose true gradient is zero (an attention key bias: softmax ignores a score added to
every key) still gets float noise, and Adam divides that noise by its own root mean square: an
update of about the learning rate, different on every CPU and thread count. The test takes the
gradient of a teacher-forced cross-entropy in float64 on three random batches and asks every
coordinate for a gradient far above float64 noise on at least one of them (a real gradient can be
small on one batch by chance; a structural zero is zero on all).
"""

import pytest
import torch
import torch.nn.functional as F
from delay_testing import make_delay_model
from siren_testing import make_model, make_text


def _near_zero_coordinates(model) -> dict[str, int]:
    """{parameter name: coordinates whose gradient is < 1e-9 x the largest on every batch}."""
    model = model.double().train()
    c = model.config
    tiny: dict[str, torch.Tensor] = {}
    for seed in range(3):
        model.zero_grad()
        g = torch.Generator().manual_seed(seed)
        codes = torch.randint(c.codebook_size, (4, c.num_codebooks, 8), generator=g)
        states, text_mask = make_text(4, seed=seed)
        out = model(codes, states.double(), text_mask)
        targets = codes[:, out.codebooks]  # [B, n, T]
        ce = F.cross_entropy(out.logits.flatten(0, 2), targets.flatten(), reduction="none")
        ((ce * out.mask.flatten()).sum() / out.mask.sum()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        scale = max(grad.abs().max().item() for grad in grads.values())
        for name, grad in grads.items():
            small = grad.abs() < 1e-9 * scale
            tiny[name] = small & tiny[name] if name in tiny else small
    return {name: int(small.sum()) for name, small in tiny.items() if small.any()}


@pytest.mark.parametrize("bias", [True, False])
def test_every_siren_coordinate_has_a_gradient(bias):
    assert _near_zero_coordinates(make_model(bias=bias)) == {}


@pytest.mark.parametrize("bias", [True, False])
def test_every_delay_lm_coordinate_has_a_gradient(bias):
    assert _near_zero_coordinates(make_delay_model(bias=bias)) == {}
