from __future__ import annotations

import re

import pytest
import yaml

from nla.resources import resource
from nla.teach import features
from nla.teach.features import chat_situation, code_language, natural_language, topic_of, user_intent, visible_text

CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nGive me a quick recipe for dinner with lentils and garlic.<|im_end|>\n"
    "<|im_start|>assistant\nHeat the oil in a pan, add the onion"
)


def test_topic_reads_the_cues_of_the_text_and_says_nothing_without_them() -> None:
    assert topic_of("Preheat the oven, then bake the bread for 20 minutes.").label == "food and cooking"
    assert topic_of("The court held that the licence terms limit liability.").label == "law and licences"
    assert topic_of("def parse(args):\n    return [int(a) for a in args]  # the function returns").label == (
        "programming"
    )
    assert topic_of("He looked at it for a while and then left.").label == ""
    # recent cues weigh more: the same counts, the later topic wins
    assert topic_of("The recipe needs garlic. " + "x " * 200 + "The court ruled on the contract.").label == (
        "law and licences"
    )


def test_visible_text_drops_the_system_turn_and_the_markup() -> None:
    text = visible_text(CHAT)
    assert "SmolLM" not in text and "<|" not in text and "assistant" not in text
    assert "lentils" in text and "onion" in text
    assert topic_of(text).label == "food and cooking"


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Le chat dort sur la table et les enfants sont dans le jardin avec une balle.", "French"),
        ("Der Hund ist nicht mit dem Ball in den Garten gegangen, und die Katze auch nicht.", "German"),
        ("El perro come en la casa de los abuelos y no quiere salir con su amigo.", "Spanish"),
        ("The dog is in the garden with the ball, and it does not want to come in.", "English"),
        ("Paris", "English"),
    ],
)
def test_natural_language_by_function_words(text: str, language: str) -> None:
    assert natural_language(text) == language


def test_code_language_from_an_open_fence_or_code_lines() -> None:
    assert code_language("Sure:\n```python\ndef f(x):\n    return") == ("Python", True)
    assert code_language("Sure:\n```js\nconst x = 1;\n```\nThat is all.") == ("", False)
    assert code_language("#include <stdio.h>\nint main() {\n  printf(") == ("C or C++", False)
    assert code_language("A plain sentence about nothing in particular.") == ("", False)


def test_chat_situation_names_the_speaker_and_what_the_user_wants() -> None:
    assert chat_situation(CHAT) == "the assistant answers a request for how-to instructions"
    assert chat_situation(CHAT.split("<|im_start|>assistant")[0] + "<|im_start|>user\nTranslate 'cat' into") == (
        "the user asks for a translation"
    )
    assert chat_situation("<|im_start|>user\nIs the sky blue?<|im_end|>\n<|im_start|>assistant\nYes") == (
        "the assistant answers a question"
    )
    assert chat_situation("No chat here.") == ""
    assert user_intent("Write a Python function that adds two numbers.") == "code"
    assert user_intent("hello") == ""


def test_the_taxonomy_is_not_built_from_the_faithfulness_concepts() -> None:
    """The faithfulness suite stays held out: no concept prompt or held-out prompt appears in the taxonomy,
    and the taxonomy's cue lists are not the concept keyword lists (at most a few words in common)."""
    topics = yaml.safe_load(resource("topics.yaml").read_text(encoding="utf-8"))["topics"]
    concepts = yaml.safe_load(resource("concepts/default.yaml").read_text(encoding="utf-8"))["concepts"]
    cues = {str(c).lower().rstrip("*") for cs in topics.values() for c in cs}
    for concept in concepts:
        keywords = {str(k).lower().rstrip("*") for k in concept["keywords"]}
        assert len(keywords & cues) <= 0.5 * len(keywords), concept["name"]
        for prompt in concept["prompts"] + concept.get("heldout", []):
            assert prompt not in resource("topics.yaml").read_text(encoding="utf-8")


def test_topic_patterns_match_whole_words_only() -> None:
    pat = features._topic_patterns()["art and design"]
    assert not re.search(pat, "the party started") and re.search(pat, "a painting of the sea")
