"""Prompt screening: a built-in rule no setting turns off, then the guild's blocked words and patterns.

Everything runs on google-re2, whose matching time is linear in the prompt, so no pattern can backtrack
for seconds. Its constant still depends on the pattern (a DFA that runs out of states falls back to a
slower NFA), so patterns are probed once when they are set, and at match time a total budget is
checked between patterns: past it the prompt is refused, never let through. Matching stays on the
calling thread on purpose: handed to a worker, a loaded machine missed the budget before the worker
even ran, refusing fine prompts. Text is normalised first (NFKC, invisible characters out, look-alike
letters folded, `_`/`-`/nothing between words treated alike) so spelling tricks do not slip past a list.
"""

from __future__ import annotations

import functools
import logging
import random
import string
import time
import unicodedata
from collections.abc import Iterable, Sequence

import re2
import regex

from bot import minor_terms

log = logging.getLogger(__name__)

MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 200
MAX_WORDS = 500
MAX_WORD_LENGTH = 100
MAX_PROGRAM_SIZE = 5000  # RE2 instructions once counted repetitions are expanded; `[a-z]{200}` is ~1200
MATCH_BUDGET = 0.05  # seconds all of a guild's patterns may take on one prompt, plus one pattern's pass
PROBE_LENGTH = 1500
PROBE_BUDGET = 0.0002  # seconds one warm pattern may take on a probe: benign ~0.01 ms, exploding ones 0.7-3 ms

BUILTIN_REFUSAL = (
    "I can't make that. Prompts that combine children or minors with sexual content are refused "
    "everywhere, on every server and in DMs."
)
TOO_SLOW_REFUSAL = "Your prompt could not be checked against this server's filters in time; shorten it and try again."

# Plain character classes, so `regex` runs them in linear time; google-re2's sub() pays Python per match.
_INVISIBLE = regex.compile(
    "[\\p{Cf}\u034f\u115f\u1160\u3164\uffa0\ufe00-\ufe0f\U000e0100-\U000e01ef\u2800]+"
)  # format characters (ZWSP, ZWJ, soft hyphen, BOM...), the grapheme joiner, Hangul fillers, variation selectors
_SEPARATORS = regex.compile(r"[\s\p{Z}_\p{Pd}]+")
_NOT_WORDS = regex.compile(r"[^\p{L}\p{N}\p{M}]+")

# Cyrillic and Greek letters that look like Latin ones, as they are after casefold(). Applied to the text
# and to every list alike, so Russian terms still match Russian text; a whole Cyrillic word that reads
# like a Latin one (`сор`, "cop") does collide with it, which is what a look-alike fold is for.
_HOMOGLYPHS = str.maketrans(
    {
        **dict(zip("авекмнорстухѕіїјһԁԛԝӏё", "abekmhopctyxsiijhdqwle", strict=True)),
        **dict(zip("αβεζικνορτυχγω", "abeziknoptuxyw", strict=True)),
        "ı": "i",
        "ɡ": "g",
        "ɑ": "a",
    }
)


def fold(text: str) -> str:
    """NFKC (fullwidth, circled and math letters become plain), casefolded, invisibles dropped,
    look-alike letters folded; punctuation kept, for patterns that spell out `-` or `_`."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _INVISIBLE.sub("", text).translate(_HOMOGLYPHS)


def normalise(text: str) -> str:
    """fold(), then every run of spaces, `_` and dashes becomes one space."""
    return _SEPARATORS.sub(" ", fold(text)).strip()


def words_view(text: str) -> str:
    """normalise(), then words only, one space apart and one at each end: " forbidden cat ". Lists match
    this view with literal spaces for word boundaries, which RE2 compiles far smaller than Unicode
    classes (its \\b is ASCII-only), and `[^ ]*` for "the rest of the word"."""
    return f" {_NOT_WORDS.sub(' ', normalise(text)).strip()} "


def _options(case_sensitive: bool, max_mem: int = 2 << 20) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.never_capture = True
    options.log_errors = False  # a refused pattern is answered to the admin, not logged by RE2
    options.max_mem = max_mem  # per compiled pattern; caps its DFA cache, so a guild's list stays small
    return options


def _compile_anywhere(body: str, options: re2.Options) -> re2._Regexp:
    """Compiled for .match(): `.*?` in front finds the body anywhere, and since the match then starts at
    0, RE2 skips the reverse scan for the start that .search() needs (30 ms on a long prompt that hits)."""
    return re2.compile(f"(?s:.*?)(?:{body})", options)


# Scripts written without spaces between words, where a term has no word boundary to wait for:
# Thai and Lao, Myanmar, Khmer, kana, CJK ideographs.
_SPACELESS = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3040, 0x30FF), (0x3400, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF))  # fmt: skip


def _spaceless(char: str) -> bool:
    return any(low <= ord(char) <= high for low, high in _SPACELESS)


def _phrase_regex(phrase: str) -> str:
    """For words_view(): whole words, with a space or nothing between them ("forbiddencat")."""
    words = words_view(phrase).split()
    body = " ?".join(re2.escape(word) for word in words)
    return ("" if _spaceless(words[0][0]) else " ") + body + ("" if _spaceless(words[-1][-1]) else " ")


# The built-in rule. Term lists live in bot/minor_terms.py; each entry is an RE2 fragment written in
# lower case and folded here like the text it meets.
def _terms_regex(terms: Iterable[str], spaced: bool = True) -> str:
    body = "|".join(term.translate(_HOMOGLYPHS).replace(" ", " ?") for term in terms)
    return f" (?:{body}) " if spaced else f"(?:{body})"


def _compile_builtin() -> tuple[re2._Regexp, re2._Regexp, re2._Regexp]:
    minors, sexual = "|".join(minor_terms.MINORS), "|".join(minor_terms.SEXUAL)
    # A compound with nothing between its halves ("nudechild", "sexykid") is caught as one word;
    # neither half alone matches inside a longer word, so "kidney" and "Essex" stay fine.
    compounds = [f"(?:{sexual})(?:{minors})", f"(?:{minors})(?:{sexual})", *minor_terms.ALWAYS]
    options = _options(case_sensitive=True, max_mem=8 << 20)  # the text is casefolded, the fragments folded
    lists: list[tuple[Sequence[str], Sequence[str]]] = [
        (minor_terms.MINORS, minor_terms.MINORS_CJK),
        (minor_terms.SEXUAL, minor_terms.SEXUAL_CJK),
        (compounds, minor_terms.ALWAYS_CJK),
    ]
    return tuple(
        _compile_anywhere(_terms_regex(spaced) + "|" + _terms_regex(cjk, False), options) for spaced, cjk in lists
    )


_BUILTIN = _compile_builtin()  # under 1 ms: RE2 builds the automaton lazily, as prompts arrive


def builtin_refusal(prompt: str) -> str | None:
    """The rule no guild can turn off: minors and sexual terms in one prompt. Apply it to the final
    positive prompt (after styles, remixes, variations); a negative prompt that lists both is normal."""
    minors, sexual, always = _BUILTIN
    text = words_view(prompt)
    if always.match(text) or (minors.match(text) and sexual.match(text)):
        return BUILTIN_REFUSAL
    return None


@functools.lru_cache(maxsize=1024)
def _word_regexes(words: tuple[str, ...]) -> tuple[re2._Regexp | None, tuple[tuple[str, re2._Regexp], ...]]:
    usable = [word for word in words if words_view(word).strip()]  # one of only punctuation can't match
    if not usable:
        return None, ()
    options = _options(case_sensitive=True)  # both sides are normalised (casefolded)
    each = tuple((word, _compile_anywhere(_phrase_regex(word), options)) for word in usable)
    return _compile_anywhere("|".join(_phrase_regex(word) for word in usable), options), each


@functools.lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re2._Regexp | None:
    try:
        return _compile_anywhere(pattern, _options(case_sensitive=False))
    except re2.error as exc:
        # Stored before RE2 was the engine (a lookaround, a backreference): skipped, not fatal.
        log.warning("blocked pattern %r does not compile under RE2 (%s); it is skipped", pattern, exc)
        return None


def _any_pattern_matches(patterns: Sequence[str], views: tuple[str, ...]) -> bool | None:
    """True or False, or None when the budget ran out first. Counted in this thread's CPU time, so a
    busy machine that preempts the bot does not refuse a fine prompt. An RE2 pass cannot be interrupted,
    but it is linear in the prompt and probed at set time, so the overshoot is one pattern (~1 ms)."""
    deadline = time.thread_time() + MATCH_BUDGET
    for pattern in patterns:
        compiled = _pattern_regex(pattern)
        if compiled is None:
            continue
        if time.thread_time() > deadline:
            return None
        if any(compiled.match(view) for view in views):
            return True
    return False


def check_prompt(
    prompt: str,
    negative_prompt: str = "",
    blocked_words: Sequence[str] = (),
    blocked_patterns: Sequence[str] = (),
    whose: str = "this server",
) -> str | None:
    """The refusal message for this prompt, or None, in ~1 ms for most lists and ~MATCH_BUDGET at worst.
    `whose` lists they are: "this server", or in DMs "the bot's operator"."""
    refusal = builtin_refusal(prompt)
    if refusal is not None:
        return refusal
    texts = [text for text in (prompt, negative_prompt) if text]
    combined, each = _word_regexes(tuple(blocked_words))
    if combined is not None:
        for view in map(words_view, texts):
            if combined.match(view):
                word = next(word for word, compiled in each if compiled.match(view))
                return f"Your prompt contains a word {whose} blocks ({word!r})."
    if not blocked_patterns:
        return None
    # Two views: normalised (so `forbidden_cat` meets a pattern for "forbidden cat") and folded with its
    # punctuation kept (so a pattern that spells out `-` or `_` still meets it).
    views = tuple(dict.fromkeys(view for text in texts for view in (normalise(text), fold(text))))
    matched = _any_pattern_matches(blocked_patterns, views)
    if matched is None:
        return TOO_SLOW_REFUSAL
    return f"Your prompt matches a pattern {whose} blocks." if matched else None


# Set-time validation: what an admin is told when a list cannot be used.
def validate_words(words: Sequence[str]) -> None:
    if len(words) > MAX_WORDS:
        raise ValueError(f"A server may block at most {MAX_WORDS} words; this list has {len(words)}.")
    for word in words:
        if len(word) > MAX_WORD_LENGTH:
            raise ValueError(f"A blocked word may be at most {MAX_WORD_LENGTH} characters; {word[:20]!r}… is longer.")


def validate_patterns(patterns: Sequence[str]) -> None:
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"A server may block at most {MAX_PATTERNS} patterns; this list has {len(patterns)}.")
    for pattern in patterns:
        validate_pattern(pattern)


def validate_pattern(pattern: str) -> None:
    """Raise ValueError, with a message for the admin, for a pattern that cannot be used."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"A pattern may be at most {MAX_PATTERN_LENGTH} characters.")
    unsupported = _unsupported_syntax(pattern)
    if unsupported:
        raise ValueError(f"`{pattern}` uses {unsupported}, which the blocklist's regex engine (RE2) does not support.")
    try:
        compiled = _compile_anywhere(pattern, _options(case_sensitive=False))
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        if "pattern too large" not in reason:
            raise ValueError(f"`{pattern}` is not a valid regular expression: {reason}.") from None
        compiled = None  # over RE2's memory cap: the same answer as over ours
    if compiled is None or compiled.programsize > MAX_PROGRAM_SIZE:
        raise ValueError(f"`{pattern}` is too large once its repetitions are expanded; use smaller counts.")
    problem = repetition_problem(pattern)
    if problem:
        raise ValueError(f"`{pattern}` {problem} (catastrophic backtracking in most regex engines); simplify it.")
    probes = _probe_texts(pattern)
    _probe_cost(compiled, probes)  # warms the automaton, as a stream of prompts would
    if min(_probe_cost(compiled, probes), _probe_cost(compiled, probes)) > PROBE_BUDGET:
        # the better of two warm runs, so a busy moment on the machine does not refuse a fine pattern
        raise ValueError(f"`{pattern}` is too slow to match on long prompts; make it more specific.")


_UNSUPPORTED = {"(?=": "a lookahead", "(?!": "a negative lookahead", "(?<=": "a lookbehind", "(?<!": "a negative lookbehind",
                "(?>": "an atomic group", "(?P=": "a backreference", "\\k<": "a backreference"}  # fmt: skip


def _unsupported_syntax(pattern: str) -> str | None:
    for marker, name in _UNSUPPORTED.items():
        if marker in pattern:
            return name
    escaped = False
    for char in pattern:
        if escaped and char in "123456789":
            return "a backreference"
        escaped = char == "\\" and not escaped
    return None


def _probe_texts(pattern: str) -> list[str]:
    """Random texts drawn from the pattern's own letters (and subsets of them, and the whole alphabet):
    the inputs on which an automaton grows the most states, and RE2 falls back to its slower NFA."""
    letters = sorted({char for char in pattern.lower() if char.isalnum()})
    alphabets = [string.ascii_lowercase + string.digits + " ", letters, [*letters, " "]]
    alphabets += [[other for other in letters if other != left_out] for left_out in letters[:4]]
    rng = random.Random(pattern)  # the same probes for the same pattern, run after run
    return ["".join(rng.choices(alphabet, k=PROBE_LENGTH)) for alphabet in alphabets if alphabet]


def _probe_cost(compiled: re2._Regexp, probes: list[str]) -> float:
    """The slowest single match over the probes, in seconds."""
    return max(_timed(compiled.match, text) for text in probes)


def _timed(function, argument) -> float:
    start = time.perf_counter()
    function(argument)
    return time.perf_counter() - start


def repetition_problem(pattern: str) -> str | None:
    """Why a repeated group could blow up a backtracking engine, or None. RE2 itself matches these in
    linear time; they are refused so a list stays portable and its intent stays readable."""
    stack: list[dict] = [{"inner": False, "alternatives": [""]}]
    last_group: dict | None = None
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        atom_end = i + 1
        if char == "\\":
            atom_end = _escape_end(pattern, i)
        elif char == "[":
            atom_end = _class_end(pattern, i)
        elif char == "(":
            if pattern.startswith("(?", i) and not pattern.startswith("(?P<", i):
                close = i + 2
                while close < n and pattern[close] not in ":)":
                    close += 1
                if close < n and pattern[close] == ")":  # `(?i)`: flags, not a group
                    i = close + 1
                    continue
                i = close + 1
            else:
                i = pattern.index(">", i) + 1 if pattern.startswith("(?P<", i) else i + 1
            stack.append({"inner": False, "alternatives": [""]})
            last_group = None
            continue
        elif char == ")" and len(stack) > 1:
            last_group = stack.pop()
            stack[-1]["inner"] |= last_group["inner"]
            stack[-1]["alternatives"][-1] += "(…)"
            i += 1
            continue
        elif char == "|":
            stack[-1]["alternatives"].append("")
            last_group = None
            i += 1
            continue
        elif char in "*+?{":
            low, high, end = _quantifier(pattern, i)
            if high != low:
                stack[-1]["inner"] = True  # variable length: a choice a backtracker can revisit
            if last_group is not None and (high is None or high > 1):
                if last_group["inner"]:
                    return "repeats a group that itself repeats, like `(a+)+`"
                if _overlapping(last_group["alternatives"]):
                    return "repeats alternatives that can match the same text, like `(a|aa)+`"
            last_group = None
            i = end
            continue
        stack[-1]["alternatives"][-1] += pattern[i:atom_end]
        last_group = None
        i = atom_end
    return None


def _escape_end(pattern: str, i: int) -> int:
    if pattern.startswith(("\\p{", "\\P{", "\\x{"), i):
        return pattern.find("}", i) + 1 or len(pattern)
    if pattern.startswith(("\\p", "\\P"), i):
        return i + 3
    if pattern.startswith("\\Q", i):
        end = pattern.find("\\E", i)
        return len(pattern) if end < 0 else end + 2
    return i + 2


def _class_end(pattern: str, i: int) -> int:
    j = i + 1
    if pattern.startswith("^", j):
        j += 1
    if pattern.startswith("]", j):
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        if pattern.startswith("[:", j):
            j = pattern.find(":]", j) + 2 if pattern.find(":]", j) > 0 else j + 1
        else:
            j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _quantifier(pattern: str, i: int) -> tuple[int, int | None, int]:
    """(least, most or None for unbounded, index after the quantifier and any lazy `?`)."""
    char = pattern[i]
    end = i + 1
    if char == "{":
        close = pattern.find("}", i)
        body = pattern[i + 1 : close] if close > 0 else ""
        low_text, _, high_text = body.partition(",")
        if close < 0 or not low_text.isdigit() or (high_text and not high_text.isdigit()):
            return 1, 1, i + 1  # a literal `{`, as RE2 reads it
        low = int(low_text)
        high = low if "," not in body else (int(high_text) if high_text else None)
        end = close + 1
    else:
        low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
    if pattern.startswith("?", end):
        end += 1
    return low, high, end


def _overlapping(alternatives: list[str]) -> bool:
    """Several alternatives that are not all plain words with different first letters."""
    if len(alternatives) < 2:
        return False
    if any(not alternative or any(c in "\\[](){}.*+?|^$…" for c in alternative) for alternative in alternatives):
        return True
    firsts = [alternative[0].casefold() for alternative in alternatives]
    return len(set(firsts)) < len(firsts)
