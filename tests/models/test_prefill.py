"""Continuation (issue 18, item 1): `begin` reads a prompt's codes in one forward (prefill) and
`step` continues; the logits it then samples from are the teacher-forced logits of the same
codes, for Siren (every generation layout) and the delay LM (its delayed steps included)."""

import pytest
import torch
from delay_testing import make_delay_model
from siren_testing import make_model, make_text

from siren_lightning.models.blocks import StackedTemporal
from siren_lightning.models.sampling import Sampler, SamplingConfig, prepare_prompts

BUILDERS = {"siren": make_model, "delay": make_delay_model}
B, T, P = 2, 9, 5


class ReplaySampler:
    """Returns the true codes of each draw and keeps the logits it was handed.

    Siren draws one codebook at a time ([N, K] logits, frames P.., codebooks 0..r-1 in order);
    the delay LM draws the active codebooks of one delay step at a time ([N, n, K], steps P..).
    """

    def __init__(self, model, codes):
        self.model, self.codes, self.calls = model, codes, 0
        self.logits = {}  # (codebook, frame) -> [N, K]

    def __call__(self, logits):
        r, t_total = self.codes.shape[1:]
        if logits.dim() == 2:  # Siren: one codebook
            t, q = P + self.calls // r, self.calls % r
            self.logits[q, t] = logits
            drawn = self.codes[:, q, t]
        else:  # delay LM: step s holds codebook q of frame s - q
            s = P + self.calls
            active = [q for q in range(r) if q <= s < q + t_total]
            for i, q in enumerate(active):
                self.logits[q, s - q] = logits[:, i]
            drawn = torch.stack([self.codes[:, q, s - q] for q in active], 1)
        self.calls += 1
        return drawn


def _layouts(name):
    if name == "siren":
        return [(True, True), (True, False), (False, True)]  # (use_cache, batch_experts)
    return [(True, True), (False, True)]


CASES = [
    (name, duration, guided, cache, batched)
    for name in sorted(BUILDERS)
    for duration in (False, True)
    for guided in (False, True)
    for cache, batched in _layouts(name)
]


@pytest.mark.parametrize("name,duration,guided,use_cache,batch_experts", CASES)
def test_prefilled_generation_samples_from_the_teacher_forced_logits(
    name, duration, guided, use_cache, batch_experts, monkeypatch
):
    model = BUILDERS[name](duration_conditioning=duration).double()
    c = model.config
    states, mask = make_text(B)
    states = states.double()
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(c.codebook_size, (B, c.num_codebooks, T), generator=g)
    uncond = torch.randn(1, 3, c.text_dim, generator=g, dtype=torch.float64)
    uncond_mask = torch.ones(1, 3, dtype=torch.bool)
    runs = []  # every StackedTemporal.run: how many positions it fed
    original = StackedTemporal.run
    monkeypatch.setattr(
        StackedTemporal, "run", lambda self, x, o: runs.append(x.shape[2]) or original(self, x, o)
    )

    prompts = prepare_prompts(
        states,
        mask,
        T,
        text_dim=c.text_dim,
        dtype=torch.float64,
        uncond_states=uncond if guided else None,
        uncond_mask=uncond_mask if guided else None,
        guided=guided,
    )
    state = model.begin(prompts, T, use_cache, batch_experts, codes[..., :P])
    if use_cache and batch_experts:
        assert runs == [P]  # the prompt in one forward, before any step
    replay = ReplaySampler(model, codes)
    for t in range(P, T):
        assert torch.equal(model.step(state, replay), codes[:, :, t])
    model.end(state)

    cond = model(codes, states, mask).logits  # [B, r, T, K]
    rows = [cond]
    if guided:
        rows.append(model(codes, uncond.expand(B, -1, -1), uncond_mask.expand(B, -1)).logits)
    expected = torch.cat(rows)  # [N, r, T, K], the rows the sampler sees
    # Every code of frames P.. was sampled (the delay LM also samples the prompt's upper
    # codebooks at its partial steps, then keeps the prompt's codes: those logits are checked too).
    assert {(q, t) for q in range(c.num_codebooks) for t in range(P, T)} <= set(replay.logits)
    for (q, t), got in replay.logits.items():
        torch.testing.assert_close(got, expected[:, q, t], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_sampler_on_prefilled_caches_draws_the_same_as_the_uncached_reference(name):
    model = BUILDERS[name](duration_conditioning=True).double()
    c = model.config
    states, mask = make_text(B)
    prompts = prepare_prompts(states.double(), mask, T, text_dim=c.text_dim, dtype=torch.float64)
    codes = torch.randint(c.codebook_size, (B, c.num_codebooks, P), generator=torch.Generator())
    drawn = []
    for use_cache in (True, False):
        sampler = Sampler(SamplingConfig(top_k=0), False, torch.Generator().manual_seed(7))
        state = model.begin(prompts, T, use_cache, True, codes)
        drawn.append(torch.stack([model.step(state, sampler) for _ in range(T - P)], -1))
        model.end(state)
    assert torch.equal(drawn[0], drawn[1])
