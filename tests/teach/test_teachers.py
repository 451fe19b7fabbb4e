from __future__ import annotations

import logging
import re
import socket

import pytest
import torch

from nla.common.errors import NLAError
from nla.core.text import readable
from nla.teach.api import AnthropicTeacher, JsonClient, OpenAITeacher
from nla.teach.base import Teacher, TeacherOptions, parse_answer, strip_marker
from nla.teach.local import HFTeacher
from nla.teach.offline import OfflineTeacher
from nla.teach.registry import make_teacher

from helpers import FakeJsonServer, tiny_target

KEY = "sk-test-SECRET-0123456789abcdef"
FAST = TeacherOptions(backoff=0.001, retries=4, timeout=5.0)
GOOD = "<explanation>The topic is cooking.\nThe final token ' pot' is a noun; ' of' follows.</explanation>"


# ----------------------------------------------------------------------------------- strict extraction


def test_parse_drops_answers_without_closing_tag() -> None:
    assert parse_answer("<explanation>Topic: food.\nFinal token: pot.") == (None, "no_closing_tag")
    assert parse_answer("Topic: food.\nFinal token: pot.") == (None, "no_tag")
    assert parse_answer(None) == (None, "no_answer")
    assert parse_answer("<explanation>  </explanation>") == (None, "empty")


def test_parse_drops_single_feature() -> None:
    assert parse_answer("<explanation>Only one feature about the final token.</explanation>") == (
        None,
        "too_few_features",
    )
    assert parse_answer("<explanation>- only one\n-\n</explanation>") == (None, "too_few_features")


@pytest.mark.parametrize(
    "body",
    [
        "1. Topic is cooking.\n2. Final token is pot.",
        "- Topic is cooking.\n- Final token is pot.",
        "* Topic is cooking.\n\n* Final token is pot.",
        "Feature 1: Topic is cooking.\nFeature 2: Final token is pot.",
        "**Feature 1:** Topic is cooking.\n**Feature 2**: Final token is pot.",
        "1) - Topic is cooking.\n2) Feature 2: Final token is pot.",
    ],
)
def test_parse_strips_list_markers(body: str) -> None:
    assert parse_answer(f"Sure!\n<explanation>{body}</explanation>\n") == (
        "Topic is cooking.\nFinal token is pot.",
        None,
    )


def test_parse_joins_wrapped_lines_and_keeps_numbers() -> None:
    text = "<explanation>\n- Topic is cooking,\n  pasta in particular.\n- Final token is pot.\n</explanation>"
    assert parse_answer(text) == ("Topic is cooking, pasta in particular.\nFinal token is pot.", None)
    assert strip_marker("3.5 million people live there") == "3.5 million people live there"
    assert readable("<|im_end|>\n\tx", ["<|im_end|>"]) == "[im_end]\\n\\tx"
    assert readable("<|im_end|>\n\tx") == "[im_end]\\n\\tx"  # specials found in the text itself


# ----------------------------------------------------------------------------------- offline teacher


def test_offline_teacher_is_deterministic_and_mentions_final_token_and_tail() -> None:
    t = tiny_target("llama")
    ctxs = ["The quick brown fox jumps over the lazy dog. Paris is the capital of", "def add(a, b):\n    return a +"]
    a1 = OfflineTeacher(TeacherOptions(tail_tokens=6, top_k=3), target=t).answer(ctxs)
    a2 = OfflineTeacher(TeacherOptions(tail_tokens=6, top_k=3), target=t).answer(list(reversed(ctxs)))[::-1]
    assert a1 == a2
    tok = t.tokenizer
    for ctx, ans in zip(ctxs, a1, strict=True):
        expl, reason = parse_answer(ans)
        assert reason is None
        setting, quote, final = expl.split("\n")
        ids = tok(ctx, add_special_tokens=False).input_ids
        assert setting.startswith("Setting:")
        assert readable(tok.decode(ids[-6:]), []) in quote and quote.startswith('The text ends with: "...')
        assert final.startswith(f'The final token is "{readable(tok.decode(ids[-1:]), [])}"')
        assert final.count("%") == 4  # top-3 predictions + the next-token kind
    assert "source code" in parse_answer(a1[1])[0] and "prose" in parse_answer(a1[0])[0]


def test_offline_teacher_compact_style_puts_the_final_token_first() -> None:
    t = tiny_target("llama")
    ctx = "The quick brown fox jumps over the lazy dog. Paris is the capital of"
    teacher = OfflineTeacher(TeacherOptions(tail_tokens=4, top_k=2, style="compact"), target=t)
    expl, reason = parse_answer(teacher.answer([ctx])[0])
    assert reason is None
    final, before, setting = expl.split("\n")
    ids = t.tokenizer(ctx, add_special_tokens=False).input_ids
    assert final.startswith(f'Final token: "{readable(t.tokenizer.decode(ids[-1:]), [])}"') and final.count("%") == 2
    assert before == f'Before it: "...{readable(t.tokenizer.decode(ids[-5:-1]), [])}"'
    assert setting == "Setting: prose."
    assert (
        teacher.version != OfflineTeacher(TeacherOptions(tail_tokens=4, top_k=2), target=t).version
    )  # separate cache keys
    with pytest.raises(NLAError, match="unknown offline teacher style 'short'"):
        OfflineTeacher(TeacherOptions(style="short"), target=t)


def test_offline_teacher_rich_style_adds_topic_language_and_situation() -> None:
    t = tiny_target("llama")
    ctx = (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nGive me a recipe for "
        "lentil soup with garlic.<|im_end|>\n<|im_start|>assistant\nFirst, boil the lentils and chop the onion"
    )
    teacher = OfflineTeacher(TeacherOptions(tail_tokens=4, top_k=2, style="rich"), target=t)
    expl, reason = parse_answer(teacher.answer([ctx])[0])
    assert reason is None
    final, about, setting, before = expl.split("\n")
    compact = parse_answer(OfflineTeacher(TeacherOptions(tail_tokens=4, top_k=2, style="compact"), target=t)
                           .answer([ctx])[0])[0].split("\n")  # fmt: skip
    assert final == compact[0] and before == compact[1]  # the compact lines, unchanged
    assert about.startswith("Topic: food and cooking; words: ") and about.endswith("Language: English.")
    assert "onion" in about and "helpful" not in about  # the system turn is not what the text is about
    wanted = r"Setting: chat, the assistant answers a request for how-to instructions\. Next comes .+ \(\d+%\)\."
    assert re.fullmatch(wanted, setting)
    assert teacher.version.endswith("-rich")
    prose = parse_answer(teacher.answer(["It was a quiet evening and nobody came"])[0])[0].split("\n")
    assert prose[1].startswith("Topic: unclear") and prose[2].startswith("Setting: prose. Next comes ")


@pytest.mark.parametrize("style", ["compact", "rich"])
def test_offline_teacher_tail_zero_drops_only_the_quote(style: str) -> None:
    t = tiny_target("llama")
    ctx = "<|im_start|>user\nHow long should I boil an egg?<|im_end|>\n<|im_start|>assistant\nBoil it for"
    quoting = OfflineTeacher(TeacherOptions(tail_tokens=4, top_k=2, style=style), target=t)
    bare = OfflineTeacher(TeacherOptions(tail_tokens=0, top_k=2, style=style), target=t)
    with_quote = parse_answer(quoting.answer([ctx])[0])[0].split("\n")
    without = parse_answer(bare.answer([ctx])[0])[0].split("\n")
    assert [x for x in with_quote if not x.startswith("Before it:")] == without
    assert len(without) == {"compact": 2, "rich": 3}[style]
    assert bare.version != quoting.version and "-t0-" in bare.version  # its own cache key
    assert OfflineTeacher(TeacherOptions(tail_tokens=0), target=t).tail == 1  # the full style always quotes


def test_offline_teacher_names_a_turn_whose_role_is_still_being_written() -> None:
    t = tiny_target("llama")
    ctx = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>ass"
    expl, _ = parse_answer(OfflineTeacher(TeacherOptions(style="compact"), target=t).answer([ctx])[0])
    assert expl.endswith("Setting: chat, at the start of a new turn.")


def test_offline_teacher_reads_a_base_models_plain_transcript_as_a_chat() -> None:
    t = tiny_target("llama")  # the chats of a model without a chat template (Gemma 3 270M base)
    teacher = OfflineTeacher(TeacherOptions(tail_tokens=0, top_k=2, style="rich"), target=t)
    ctx = "<bos>User: Give me a recipe for lentil soup.\n\nAssistant: First, boil the lentils"
    setting = parse_answer(teacher.answer([ctx])[0])[0].split("\n")[2]
    assert setting.startswith("Setting: chat, the assistant answers a request for how-to instructions.")
    start = parse_answer(teacher.answer(["<bos>User:"])[0])[0].split("\n")[2]
    assert start.startswith("Setting: chat, at the start of a new turn.")
    prose = parse_answer(teacher.answer(["The User: field of the form was empty, so"])[0])[0].split("\n")[2]
    assert prose.startswith("Setting: prose.")  # a label inside a sentence is no turn


def test_offline_teacher_shares_one_forward_per_document_prefix() -> None:
    t = tiny_target("llama")
    doc = "Paris is the capital of France. Berlin is the capital of Germany."
    tok = t.tokenizer
    ids = tok(doc, add_special_tokens=False).input_ids
    cuts = [tok.decode(ids[:k]) for k in (5, 9, len(ids))]  # three rows of one document
    teacher = OfflineTeacher(TeacherOptions(), target=t)
    together = teacher.answer(cuts)
    assert teacher.n_sequences == 1
    alone = [OfflineTeacher(TeacherOptions(), target=t).answer([c])[0] for c in cuts]
    assert together[-1] == alone[-1]
    # read at the prefix positions, the long forward gives the same next-token distributions
    seq = {i: tok(c, add_special_tokens=False).input_ids for i, c in enumerate(cuts)}
    shared = teacher._forward(t, [2], seq, {2: [2, 1, 0]})
    for i in (0, 1):
        single = teacher._forward(t, [i], seq, {i: [i]})
        torch.testing.assert_close(shared[i], single[i], atol=1e-5, rtol=1e-4)


def test_offline_teacher_forwards_separately_when_retokenisation_differs() -> None:
    t = tiny_target("llama")
    teacher = OfflineTeacher(TeacherOptions(), target=t)
    tok = t.tokenizer
    long, short = "Paris is", "Pari"  # "Pari" is a string prefix, but not a token prefix
    assert tok(long, add_special_tokens=False).input_ids[:2] != tok(short, add_special_tokens=False).input_ids
    answers = teacher.answer([long, short, ""])
    assert teacher.n_sequences == 2 and answers[2] is None
    assert all(parse_answer(a)[1] is None for a in answers[:2])


def test_hf_teacher_batches_with_left_padding() -> None:
    t = tiny_target("llama")
    teacher = HFTeacher(TeacherOptions(max_tokens=4, batch_size=4), target=t)
    ctxs = ["hello", "The quick brown fox jumps over the lazy dog."]
    batched = teacher.answer(ctxs)
    assert batched == [teacher.answer([c])[0] for c in ctxs]
    assert t.tokenizer.padding_side == "right"
    assert isinstance(teacher, Teacher) and teacher.max_batch == 4


# ----------------------------------------------------------------------------------- API teachers


def _openai_ok(req: dict) -> tuple[int, dict]:
    return 200, {"choices": [{"message": {"role": "assistant", "content": GOOD}}]}


def test_openai_retries_429_then_succeeds(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    replies = [(429, {"error": "slow down"}), (429, {"error": "slow down"})]
    with FakeJsonServer(lambda req: replies.pop(0) if replies else _openai_ok(req)) as srv:
        sleeps: list[float] = []
        teacher = OpenAITeacher(
            TeacherOptions(model="my-model", base_url=srv.url + "/v1", backoff=0.01), sleep=sleeps.append
        )
        assert teacher.answer(["Bring a large pot"]) == [GOOD]
    assert len(srv.requests) == 3 and len(sleeps) == 2
    req = srv.requests[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    assert req["json"]["model"] == "my-model"
    assert req["json"]["messages"][0]["role"] == "user"
    assert req["json"]["messages"][0]["content"].endswith("<excerpt>Bring a large pot</excerpt>")


def test_openai_without_key_sends_no_auth_and_bare_host_gets_v1(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeJsonServer(_openai_ok) as srv:
        OpenAITeacher(TeacherOptions(base_url=srv.url)).answer(["x"])
    assert srv.requests[0]["path"] == "/v1/chat/completions"
    assert "authorization" not in srv.requests[0]["headers"]


def test_401_is_one_clear_error_without_the_key(monkeypatch, caplog) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    with FakeJsonServer(lambda req: (401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})) as srv:
        teacher = OpenAITeacher(TeacherOptions(base_url=srv.url + "/v1", backoff=0.001))
        with pytest.raises(NLAError) as err:
            teacher.answer(["x"])
    msg = str(err.value)
    assert "HTTP 401" in msg and "API key" in msg and "\n" not in msg
    assert KEY not in msg and KEY not in caplog.text and KEY not in repr(teacher.__dict__.get("opts"))
    assert len(srv.requests) == 1  # not retried


def test_5xx_retries_are_bounded_and_seeded(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeJsonServer(lambda req: (503, {"error": "overloaded"})) as srv:
        delays: list[list[float]] = [[], []]
        for i in range(2):
            teacher = OpenAITeacher(
                TeacherOptions(base_url=srv.url, retries=2, backoff=0.01, seed=3), sleep=delays[i].append
            )
            with pytest.raises(NLAError, match="after 3 attempts: HTTP 503"):
                teacher.answer(["x"])
    assert delays[0] == delays[1] and len(delays[0]) == 2
    assert delays[0][1] > 0.01  # the second delay is doubled: 0.02 * (0.5 .. 1.5)


def test_connection_errors_are_retried(caplog) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    client = JsonClient("openai", TeacherOptions(retries=2, backoff=0.001, timeout=2.0), KEY)
    with pytest.raises(NLAError, match="after 3 attempts"):
        client.post(f"http://user:{KEY}@127.0.0.1:{port}/v1/chat/completions", {}, {"authorization": KEY})
    assert KEY not in caplog.text


def test_anthropic_request_format(monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    reply = {
        "content": [{"type": "text", "text": GOOD[:40]}, {"type": "text", "text": GOOD[40:]}],
        "stop_reason": "end_turn",
    }
    with FakeJsonServer(lambda req: (200, reply)) as srv:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
        teacher = make_teacher("anthropic", TeacherOptions(model="claude-test", max_tokens=123))
        assert teacher.answer(["Bring a large pot"]) == [GOOD]
    req = srv.requests[0]
    assert req["path"] == "/v1/messages"
    assert req["headers"]["x-api-key"] == KEY and req["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req["headers"]
    body = req["json"]
    assert body["model"] == "claude-test" and body["max_tokens"] == 123 and "temperature" not in body
    assert body["messages"] == [{"role": "user", "content": body["messages"][0]["content"]}]
    assert "<excerpt>Bring a large pot</excerpt>" in body["messages"][0]["content"]


def test_anthropic_needs_a_key(monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(NLAError, match="ANTHROPIC_API_KEY"):
        AnthropicTeacher(FAST)
    with pytest.raises(NLAError, match="unknown teacher 'gpt'"):
        make_teacher("gpt")


@pytest.mark.slow
def test_offline_teacher_on_smollm2_names_the_prediction(smollm2) -> None:
    teacher = OfflineTeacher(TeacherOptions(), target=smollm2)
    chat = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is"
    expl, reason = parse_answer(teacher.answer([chat])[0])
    assert reason is None
    setting, quote, final = expl.split("\n")
    assert "chat transcript" in setting and "assistant's turn" in setting and "france" in setting
    assert quote.endswith('[im_start]assistant\\nThe capital of France is"')
    assert final.startswith('The final token is " is", the start of a word') and '" Paris"' in final
