from __future__ import annotations

import copy

from nla.data.documents import Document
from nla.data.positions import encode_document, plain_transcript

from helpers import tiny_tokenizer

CHAT = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
)


def test_plain_transcript_labels_roles_and_finds_the_head() -> None:
    text, head = plain_transcript(list(CHAT))
    assert text == "System: Be brief.\n\nUser: What is the capital of France?\n\nAssistant: Paris."
    assert head == "System: Be brief.\n\nUser:"
    assert plain_transcript([{"role": "system", "content": "x"}]) == ("System: x", "System: x")


def test_a_chat_reaches_a_base_model_as_a_plain_transcript() -> None:
    tok = copy.deepcopy(tiny_tokenizer())
    doc = Document("c1", messages=CHAT)
    with_template = encode_document(tok, doc, max_tokens=512, skip=50)
    tok.chat_template = None  # a base model (the embedded Gemma): no chat template
    enc = encode_document(tok, doc, max_tokens=512, skip=50)
    text, head = plain_transcript(list(CHAT))
    assert enc.ids == tok(text)["input_ids"] != with_template.ids
    n_head = len(tok(head)["input_ids"])
    assert enc.start == n_head < 50  # positions may start at the user's message, as for templated chats
    assert tok.decode(enc.ids[enc.start :]).startswith(" What is the capital")
    assert encode_document(tok, doc, max_tokens=5, skip=2).ids == enc.ids[:5]
    assert encode_document(tok, doc, max_tokens=512, skip=2).start == 2
