"""bot/prompt_filter.py: the built-in rule, spelling tricks, and blocklists that cannot freeze the loop."""

from __future__ import annotations

import random
import string
import time

import pytest

from bot import prompt_filter
from bot.prompt_filter import (
    BUILTIN_REFUSAL,
    MATCH_BUDGET,
    MAX_PATTERN_LENGTH,
    MAX_PATTERNS,
    TOO_SLOW_REFUSAL,
    builtin_refusal,
    check_prompt,
    normalise,
    validate_pattern,
    validate_patterns,
    validate_words,
)

# Clear combinations, in every language the rule covers, plain and dressed up.
FORBIDDEN = [
    "nude child",
    "sexy kid on a bed",
    "naked teen girl",
    "a 12 year old girl in lingerie",
    "12-year-old, nude",
    "14 y/o topless",
    "loli hentai",
    "lolicon artwork",
    "child porn",
    "childporn",
    "nudechild",
    "sexy_kid",
    "undressed toddler",
    "erotic photo of a schoolgirl",
    "niña desnuda",
    "fillette nue",
    "nacktes Kind",
    "Kinderporno",
    "criança nua",
    "bambina nuda",
    "голая девочка",
    "детская порнография",
    "児童ポルノ",
    "裸の少女",
    "全裸の幼女",
    "萝莉 色情",
    "儿童裸体",
    "n\u200bude ch\u00adild",  # zero-width space, soft hyphen
    "ｎｕｄｅ ｃｈｉｌｄ",  # fullwidth
    "NUDE CH\u0406LD",  # Cyrillic І
    "nud\u0435 kid",  # Cyrillic е
    "n\u03c5de kid",  # Greek υ
]

ORDINARY = [
    "kidney beans in a bowl",
    "childhood memories of a beach",
    "teenage mutant ninja turtles poster",
    "a mother reading to her children by the fireplace",
    "kids playing soccer in the park at sunset",
    "a watercolor painting of a fox in the snow",
    "portrait of an old sailor, dramatic lighting, 8k",
    "a sexy red sports car on a mountain road",
    "nude lipstick product photo on marble",
    "a naked mole rat at the zoo",
    "minor league baseball stadium at night",
    "school children on a field trip to a museum",
    "Essex countryside with sheep",
    "Sussex cathedral in the rain",
    "a kind old woman baking bread",
    "one of a kind vintage lingerie shop window",
    "a baby elephant with its mother",
    "a teen reading a book in a library",
    "adult woman in a swimsuit on a beach, fashion photo",
    "bodybuilder flexing, gym poster",
    "an infant sleeping in a crib, soft light",
    "a cozy cabin in the woods, autumn",
    "cyberpunk street market at night, neon signs",
    "a dragon made of glass, studio lighting",
    "classical marble statue of Venus in a museum",
    "a nudibranch on a coral reef, macro photo",
    "strip mall parking lot at dusk",
    "a comic strip about a cat",
    "12 cupcakes on a table",
    "a 30 year old man hiking",
    "un niño jugando con su perro en el parque",
    "des enfants qui jouent au football",
    "Kinder spielen im Schnee",
    "crianças brincando na praia",
    "bambini che giocano in piazza",
    "дети играют в снегу",
    "детектив в плаще под дождём",
    "голова античной статуи",
    "子供の誕生日パーティー",
    "子供がヌードルを食べている",
    "カロリー表示のある子供向けシリアル",
    "フロリダのビーチで遊ぶ子供たち",
    "ヒエログリフを読む子供",
    "裸足の子供が砂浜を走る",
    "裸の王様の絵本を読む子供",
    "儿童节快乐海报",
    "孩子们在公园里放风筝",
    "Nina Simone at the piano",
    "a sensual perfume advertisement with a woman",
    "a pink flamingo standing in a lake at dawn",
]


@pytest.mark.parametrize("prompt", FORBIDDEN)
def test_the_builtin_rule_refuses_minors_combined_with_sexual_terms(prompt):
    assert builtin_refusal(prompt) == BUILTIN_REFUSAL
    assert check_prompt(prompt) == BUILTIN_REFUSAL  # with no guild lists at all, as in a DM


def test_fifty_ordinary_prompts_pass_the_builtin_rule():
    assert len(ORDINARY) == 50
    refused = [prompt for prompt in ORDINARY if check_prompt(prompt) is not None]
    assert refused == []


def test_the_builtin_rule_reads_the_positive_prompt_only():
    # "child, nude" in a negative prompt steers away from exactly what the rule forbids.
    assert check_prompt("a portrait of a woman", negative_prompt="child, nude, nsfw") is None


def test_normalise_folds_width_case_look_alikes_invisibles_and_separators():
    assert normalise("Ｆｏｒｂｉｄ\u200bden_c\u0430t -- SOFT\u00adhyphen") == "forbidden cat softhyphen"
    assert normalise("\ufeffΑΒΕ\u2060  x") == "abe x"


SPELLINGS = [
    "forbid\u200bden cat",  # zero-width space
    "forbid\u00adden cat",  # soft hyphen
    "ｆｏｒｂｉｄｄｅｎ ｃａｔ",  # fullwidth letters
    "f\u043erbidden cat",  # Cyrillic о
    "forbidden_cat",
    "forbiddencat",
    "forbidden-cat",
    "\ufeffFORBIDDEN\u00a0\u00a0CAT",  # byte-order mark, capitals, no-break spaces
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_spelling_variants_of_a_blocked_phrase_are_caught(spelling):
    refusal = check_prompt(f"a photo of a {spelling} on a sofa", blocked_words=["forbidden cat"])
    assert refusal == "Your prompt contains a word this server blocks ('forbidden cat')."
    pattern_refusal = check_prompt(f"a {spelling}", blocked_patterns=[r"forbidden\s?cat"])
    assert pattern_refusal == "Your prompt matches a pattern this server blocks."


def test_blocked_words_are_whole_words_and_checked_in_the_negative_prompt_too():
    assert check_prompt("spiderman-free zone: a cat", blocked_words=["spider"]) is None
    assert check_prompt("concatenate", blocked_words=["cat"]) is None
    assert "('gore')" in check_prompt("a cat", "gore, blood", blocked_words=["spider", "gore"])
    assert "('猫')" in check_prompt("黑猫在屋顶上", blocked_words=["猫"])  # no spaces between CJK words


def test_a_pattern_that_spells_out_a_hyphen_still_matches():
    assert check_prompt("spider-man swinging", blocked_patterns=["spider-man"]) is not None
    assert check_prompt("spider man swinging", blocked_patterns=["spider-man"]) is None


CATASTROPHIC = [
    ("(a+)+$", "a" * 5000 + "!"),
    ("(a|aa)+$", "a" * 5000 + "!"),
    ("(a|a?)+$", "a" * 5000 + "!"),
    ("(x+x+)+y", "x" * 5000),
    (r"(\w+\s?)+$", "ab " * 1500 + "!"),
    ("(.*a){20}", "a" * 5000),
    ("(k|kk)+z", "k" * 5000),  # letters other than a, b, x, y
    ("(?:q|qq)*r", "q" * 5000),
    (r"^(([m-p])+.)+[A-Z]([m-p])+$", "mnop" * 1200 + "!"),
    ("(?:[d-g]+)+!", "defg" * 1200),
    ("([ck]|c)+e", "ck" * 2500),
    (r"(\d+)*x", "7" * 5000),
    (r"(a)\1", "aa"),
    ("(?P<n>t)(?P=n)", "tt"),
    ("(?=a)b", "ab"),
    ("(?<!m)n", "mn"),
    ("(?>s+)s", "sss"),
]


@pytest.mark.parametrize(("pattern", "bad_input"), CATASTROPHIC)
def test_catastrophic_patterns_are_refused_at_set_time_and_harmless_at_match_time(pattern, bad_input):
    with pytest.raises(ValueError) as refused:
        validate_pattern(pattern)
    message = str(refused.value)
    assert pattern in message and ("RE2" in message or "catastrophic backtracking" in message)
    # Even unvalidated (a list stored before this check existed), matching is linear and bounded.
    start = time.thread_time()  # CPU time: a loaded machine's waits are not the pattern's cost
    result = check_prompt(bad_input, blocked_patterns=[pattern] * 5)
    assert time.thread_time() - start < 0.05
    assert result != TOO_SLOW_REFUSAL


def test_patterns_whose_automaton_explodes_are_refused_by_the_probe():
    for pattern in (".*a.{30}.*b.{20}q", "[^!]*e[^!]{15}!"):
        with pytest.raises(ValueError, match="too slow"):
            validate_pattern(pattern)


def test_ordinary_patterns_are_accepted():
    for pattern in (
        r"blood\w*",
        r"\bne+on\b",
        "(cat|dog)s?",
        "(foo|bar)+",
        r"spider[ -]?man",
        "(?i)Gore",
        r"\p{Greek}+",
    ):
        validate_pattern(pattern)


def test_caps_on_pattern_count_length_size_and_words():
    with pytest.raises(ValueError, match="at most 200 characters"):
        validate_pattern("a" * (MAX_PATTERN_LENGTH + 1))
    with pytest.raises(ValueError, match="at most 100 patterns"):
        validate_patterns([f"word{i}" for i in range(MAX_PATTERNS + 1)])
    with pytest.raises(ValueError, match="too large once its repetitions are expanded"):
        validate_pattern(r"\pL{1,300}\pL{1,300}")  # over RE2's own memory cap
    with pytest.raises(ValueError, match="too large once its repetitions are expanded"):
        validate_pattern("[a-z]{200}" * 5)  # compiles, but into more than MAX_PROGRAM_SIZE instructions
    with pytest.raises(ValueError, match="not a valid regular expression"):
        validate_pattern("([unclosed")
    with pytest.raises(ValueError, match="at most 500 words"):
        validate_words([f"w{i}" for i in range(501)])


def max_length_patterns(rng: random.Random) -> list[str]:
    """100 distinct patterns of exactly MAX_PATTERN_LENGTH characters, in four shapes that pass validation."""

    def word() -> str:
        return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9)))

    def fill(head: str, tail: str, sep: str) -> str:
        body = word()
        while len(head + body + sep + tail) + 9 <= MAX_PATTERN_LENGTH:
            body += sep + word()
        return head + body.ljust(MAX_PATTERN_LENGTH - len(head) - len(tail), "z") + tail

    patterns = []
    for i in range(MAX_PATTERNS):
        shape = i % 4
        if shape == 0:
            pattern = fill(r"\b(?:", r")\b", "|")
        elif shape == 1:
            pattern = fill("[a-z ]*", "", "[a-z ]{25}")
        elif shape == 2:
            pattern = fill(r"\w+ing\s+", r"\s+\w{3,12}", r"\s+")
        else:
            pattern = fill("", "", "[ _-]?")
        patterns.append(pattern)
    return patterns


def test_a_hundred_patterns_of_the_maximum_length_check_a_long_prompt_in_under_50_ms():
    rng = random.Random(16)
    patterns = max_length_patterns(rng)
    assert len(set(patterns)) == MAX_PATTERNS and {len(p) for p in patterns} == {MAX_PATTERN_LENGTH}
    validate_patterns(patterns)
    vocabulary = "a cat on a windowsill at sunset oil painting highly detailed warm light bokeh portrait".split()
    worst = 0.0
    for _ in range(5):
        prompt = " ".join(rng.choices(vocabulary, k=1200))[:6000]  # Discord's longest option value
        start = (
            time.thread_time()
        )  # CPU time, as the match budget counts it: preemption on a loaded machine is not ours
        result = check_prompt(prompt, prompt[::-1], blocked_words=["spider", "gore"], blocked_patterns=patterns)
        worst = max(worst, time.thread_time() - start)
        assert result is None  # checked in full: not refused for running out of time
    assert worst < 0.05, f"{worst * 1000:.1f} ms"


def test_the_match_budget_is_a_hard_bound_even_for_patterns_that_skipped_validation():
    slow = [f".*a.{{{30 + i % 20}}}.*b.{{{20 + i % 10}}}q" for i in range(MAX_PATTERNS)]
    rng = random.Random(1)
    prompt = "".join(rng.choices(string.ascii_lowercase + " ", k=6000))
    start = time.thread_time()  # the budget is CPU time: a loaded machine's waits do not count against it
    result = check_prompt(prompt.replace("q", ""), prompt[::-1].replace("q", ""), blocked_patterns=slow)
    elapsed = time.thread_time() - start
    assert result == TOO_SLOW_REFUSAL  # refused, never let through unchecked
    assert elapsed < MATCH_BUDGET + 0.03


def test_a_pattern_that_no_longer_compiles_is_skipped_not_fatal(caplog):
    prompt_filter._pattern_regex.cache_clear()  # so the warning is logged again here
    assert check_prompt("a lookahead", blocked_patterns=["(?=a)", "look"]) is not None
    assert check_prompt("nothing here", blocked_patterns=["(?=a)"]) is None
    assert "does not compile under RE2" in caplog.text
