"""The generation backends: the hand-rolled HF loop gives model.generate's greedy answers, shares the
prefill of a vector between its slots, lets finished rows leave without changing the others, and the vLLM
backend builds the right prompt embeddings and requests (a fake engine, no GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nla.common.errors import NLAError
from nla.core.inject import inject
from nla.core.sampling import next_tokens, top_p_filter
from nla.evaluate.rerank import candidates
from nla.generation import GREEDY, Request, Slot, get_backend
from nla.generation.base import group_batches
from nla.generation.vllm import VLLMBackend, prompt_embeds
from nla.models.av import ActivationVerbalizer
from nla.models.sequences import left_pad

from helpers import random_av as _av
from helpers import tiny_target


def _hf_generate(av: ActivationVerbalizer, v: torch.Tensor, n: int) -> list[list[int]]:
    """The reference: transformers' own greedy generate with the injection hook (the pre-backend path)."""
    prompt = av.prompt_ids()
    ids, mask = left_pad([prompt] * v.shape[0], av.tokenizer.pad_token_id)
    with av.injector(v):
        out = av.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=list(av.stop_ids()),
            pad_token_id=av.tokenizer.pad_token_id,
        )
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        stop = next((i for i, t in enumerate(row) if t in av.stop_ids()), None)
        rows.append(row[: stop + 1] if stop is not None else row)
    return rows


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_hf_backend_greedy_equals_transformers_generate(arch: str) -> None:
    av = _av(arch)
    v = torch.randn(6, av.d_model) * 3
    free = _hf_generate(av, v, 12)  # a tiny random model rarely ends its turn: make a token it writes the stop
    rows_with = torch.zeros(len(av.tokenizer))  # how many answers write each token (after their 3rd)
    for row in free:
        rows_with[sorted(set(row[3:]))] += 1
    stop = int(torch.where(rows_with < len(free), rows_with, 0).argmax())  # in most rows, not in all
    av.stop_ids = lambda: (stop,)  # type: ignore[method-assign]
    ref = _hf_generate(av, v, 12)
    got = av.sample(v, max_new_tokens=12, batch_size=4).ids
    assert got == ref
    assert len({len(r) for r in got}) > 1, "the test needs rows of different lengths (rows leaving the batch)"


def test_sampling_does_not_depend_on_batching_and_slots_share_a_prefill() -> None:
    av = _av()
    v = torch.randn(3, av.d_model) * 3
    slots = [GREEDY, Slot(1.0), Slot(1.0)]
    a = av.sample_slots(v, slots, max_new_tokens=10, batch_size=9, seed=5)
    b = av.sample_slots(v, slots, max_new_tokens=10, batch_size=1, seed=5)
    assert a.ids == b.ids  # one batch of 9 rows vs 3 batches of 3 (each vector's slots together)
    greedy = av.sample(v, max_new_tokens=10, batch_size=2).ids
    assert [a.ids[i * 3] for i in range(3)] == greedy  # slot 0 of each vector is its greedy answer
    c = av.sample_slots(v, slots, max_new_tokens=10, batch_size=9, seed=6)
    assert a.ids != c.ids  # the seed matters (samples differ)


def test_prefill_runs_once_per_vector_not_per_slot() -> None:
    av = _av()
    seen: list[tuple[int, int]] = []
    handle = av.model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    try:
        av.sample_slots(torch.randn(2, av.d_model), [GREEDY, Slot(1.0), Slot(1.0), Slot(1.0)], max_new_tokens=3)
    finally:
        handle.remove()
    p = len(av.prompt_ids())
    m = av.prompt_ids().index(av.marker.token_id)
    assert seen[0] == (1, m)  # the shared prefix, batch 1
    assert seen[1] == (2, p - m)  # from the marker on: one row per vector, not per answer
    assert all(s[1] == 1 for s in seen[2:]) and seen[2][0] == 8  # decoding steps: 2 vectors x 4 slots


def test_best_of_candidates_keep_the_greedy_answer_first() -> None:
    av = _av()
    v = torch.randn(2, av.d_model) * 3
    cands = candidates(av, v, 3, max_new_tokens=8, batch_size=2, seed=0, min_support=1)
    greedy = av.sample(v, max_new_tokens=8)
    assert [cands.ids[0], cands.ids[3]] == greedy.ids
    assert len(cands.ids) == 6


def test_group_batches_keep_a_vectors_slots_together() -> None:
    assert group_batches(5, 4, 8) == [range(0, 2), range(2, 4), range(4, 5)]
    assert group_batches(3, 4, 2) == [range(0, 1), range(1, 2), range(2, 3)]  # at least one vector


def test_next_tokens_greedy_rows_take_the_argmax_and_top_p_keeps_the_nucleus() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [1.0, 0.0, 4.0]])
    assert next_tokens(logits, [0.0, 0.0], [1.0, 1.0], [None, None]).tolist() == [1, 2]
    filtered = top_p_filter(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), 0.7)
    assert torch.isfinite(filtered).tolist() == [True, True, False, False]
    g = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]
    draws = {int(next_tokens(logits[:1], [1.0], [0.6], g[:1])[0]) for _ in range(20)}
    assert draws == {1}  # top-p 0.6 leaves only the argmax (p = 0.84)


def test_sampled_rows_follow_their_distribution_and_their_own_generator() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7]]))  # token 3 of row 0: p = 0
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(3000):
        counts[next_tokens(logits[:1], [1.0], [1.0], [g])[0]] += 1
    assert counts[3] == 0 and torch.allclose(counts / 3000, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.03)
    # a row's draw depends on its generator and its logits only, not on the rows beside it
    alone = next_tokens(logits[1:], [0.7], [1.0], [torch.Generator().manual_seed(5)])
    both = next_tokens(logits, [0.0, 0.7], [1.0, 1.0], [None, torch.Generator().manual_seed(5)])
    assert both.tolist() == [0, int(alone[0])]


def test_unknown_backend_is_one_clear_error() -> None:
    with pytest.raises(NLAError, match="unknown generation backend"):
        get_backend("nope")


class FakeEngine:
    """Stands in for ``vllm.LLM``: records the prompts and answers greedy requests with two tokens and a stop
    (left out of the ids, as vLLM may), sampled ones with tokens up to the cap."""

    def __init__(self, stop: int) -> None:
        self.stop, self.calls = stop, []

    def generate(self, prompts, params):
        self.calls.append((prompts, params))
        outs = []
        for sp in params:
            greedy = sp.temperature == 0
            ids = [5, 6] if greedy else [7] * sp.max_tokens
            done = SimpleNamespace(token_ids=ids, finish_reason="stop" if greedy else "length", stop_reason=None)
            outs.append(SimpleNamespace(outputs=[done]))
        return outs


def test_vllm_backend_sends_injected_prompt_embeds_to_the_engine() -> None:
    av = _av()
    engine = FakeEngine(av.eot_id)
    av.backend = VLLMBackend(engine=engine, params_factory=lambda **kw: SimpleNamespace(**kw))
    v = torch.randn(2, av.d_model) * 3
    out = av.sample_slots(v, [GREEDY, Slot(0.7)], max_new_tokens=4, seed=3)
    prompts, params = engine.calls[0]
    assert len(prompts) == 4 and [p.temperature for p in params] == [0.0, 0.7, 0.0, 0.7]
    assert params[0].seed is None and params[1].seed is not None and params[1].seed != params[3].seed
    assert all(p.stop_token_ids == list(av.stop_ids()) for p in params)
    m = av.prompt_ids().index(av.marker.token_id)
    emb = prompts[2]["prompt_embeds"]  # vector 1, greedy slot
    want = inject(av.model.get_input_embeddings()(torch.tensor([av.prompt_ids()])), torch.tensor([m]), v[1:2], 4.0)
    assert torch.allclose(emb, want[0].detach())
    assert abs(float(emb[m].norm()) - 4.0) < 1e-4
    assert out.ids[0] == [5, 6, av.stop_ids()[0]] and not out.truncated[0]  # the stop token is restored
    assert out.truncated[1] and len(out.ids[1]) == 4


def test_vllm_prompt_embeds_refuse_add_mode() -> None:
    av = _av()
    av.injection_mode = "add"
    with pytest.raises(NLAError, match="replacing"):
        prompt_embeds(av, torch.randn(1, av.d_model))


def test_request_rows() -> None:
    r = Request(torch.zeros(3, 4), (GREEDY, Slot(1.0)), 5, (1,), 8, None)
    assert r.rows == 6


def test_for_inference_merges_lora_and_keeps_greedy_answers() -> None:
    from nla.models.lora import apply_lora, is_lora

    av = _av()
    av.model = apply_lora(av.model, r=4, alpha=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in av.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)  # a non-zero adapter
    v = torch.randn(4, av.d_model) * 3
    before = av.sample(v, max_new_tokens=8).ids
    assert av.for_inference() is av and not is_lora(av.model)
    assert av.sample(v, max_new_tokens=8).ids == before
    # ... and stores the linear weights column-major for decoding (same values, same answers)
    layers = [m for m in av.model.modules() if isinstance(m, torch.nn.Linear)]
    head = av.model.get_output_embeddings()
    assert all(m.weight.t().is_contiguous() for m in layers if m is not head)


def test_column_major_linears_give_the_same_logits_bit_for_bit() -> None:
    from nla.generation.hf import column_major_linears

    model = tiny_target("llama").model.eval()  # its LM head is tied to the input embeddings
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        moved = column_major_linears(model)
        after = model(input_ids=ids).logits
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert moved == len(linears) - 1  # all but the LM head tied to the input embeddings
    assert model.get_input_embeddings().weight.is_contiguous()  # the embedding still looks up rows
    assert torch.equal(before, after)


def test_rl_rollouts_sync_the_weights_into_the_vllm_engine_and_sample_through_it() -> None:
    from contextlib import nullcontext

    from nla.train.rl.config import RLConfig
    from nla.train.rl.rollout import sample_rollouts

    av = _av()
    engine = FakeEngine(av.eot_id)
    loaded: list[str] = []
    engine.load_weights = lambda named: loaded.extend(name for name, _ in named)
    av.backend = VLLMBackend(engine=engine, params_factory=lambda **kw: SimpleNamespace(**kw))
    cfg = RLConfig(group_size=3, max_new_tokens=5, temperature=1.0, gen_batch_size=8)
    ro = sample_rollouts(av, torch.randn(2, av.d_model), cfg, seed=1, amp=nullcontext())
    assert loaded and len(ro.responses.ids) == 6 and engine.calls
    assert all(p.temperature == 1.0 for p in engine.calls[0][1])


@pytest.mark.parametrize("n_vectors", [1, 3])
def test_the_lm_head_multiplies_dense_rows_in_bf16_and_the_same_logits_in_fp32(n_vectors: int) -> None:
    """The prefill's last position is a strided slice; in bf16 on CPU torch multiplied such a slice by a
    batch-expanded copy of the whole head. The backend hands the head a dense copy (also for a batch of one,
    whose slice ``.contiguous()`` keeps strided), and that changes no fp32 answer."""
    from nla.generation.hf import contiguous_head_input

    av = _av("gemma3")
    v = torch.randn(n_vectors, av.d_model) * 3
    fp32 = av.sample(v, max_new_tokens=5, batch_size=4).ids
    seen: list[tuple[int, ...]] = []
    head = av.model.get_output_embeddings()
    spy = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].stride()))
    try:
        av.model.to(torch.bfloat16)
        av.sample(v, max_new_tokens=5, batch_size=4)
        hidden = torch.randn(n_vectors, 7, av.d_model, dtype=torch.bfloat16)
        with contiguous_head_input(av.model):
            head(hidden[:, -1:, :])
    finally:
        spy.remove()
        av.model.to(torch.float32)
    dense = [s for s in seen if s[-2:] == (av.d_model, 1) and s[0] in (av.d_model, 0)]
    assert seen and dense == seen, f"strided head inputs: {seen}"
    assert av.sample(v, max_new_tokens=5, batch_size=4).ids == fp32
