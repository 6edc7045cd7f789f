"""Nougat's post-processing of generated pages into Markdown (facebookresearch/nougat's
nougat/postprocessing.py ``postprocess_single``; transformers' ``NougatTokenizerFast.post_process_single``).

The steps, in order: drop over-long "section titles" and bare numbered headings, a heading left
dangling at the end of the page, the repeated tail of a degenerate generation
(:func:`truncate_repetitions`), runs of near-identical reference lines (hallucinated references,
:func:`remove_hallucinated_references`, replaced by ``[MISSING_PAGE_POST]``), malformed reference
lines, PMC math artefacts, footnote markup, then split run-together list items onto lines, fix
table whitespace and remove empty or broken tables, collapse blank lines, and (``fix_markdown``)
the Markdown compatibility fixes of :func:`markdown_compatible` (equation tags, bold math, links,
code blocks).

transformers rewrote three steps of the original, so the two disagree on some pages;
``reference`` picks one: ``"nougat"`` (the default: the original's behaviour) or
``"transformers"``:

* the bare-heading pattern (the original's removes ``# 1.ii`` but keeps ``# 1.``; transformers'
  the reverse);
* :func:`truncate_repetitions`: where the original extends the kept text sentence by sentence
  until a sentence of the repeated tail comes back, transformers takes the start of the sentence
  as an index into the *reversed* text, so it usually stops after one more sentence;
* splitting list items (``- a - b - c`` onto lines): transformers' line-by-line rewrite also
  takes lines that start with ``--`` or ``**``, which the original's pattern skips.

Four of the originals' regular expressions backtrack catastrophically on degenerate output (the
original's bare-heading pattern is exponential in a run of digits: 30 digits take a minute; the
empty-tabular, footnote and code-block patterns are cubic in a run of spaces or of openings:
``"```"`` and 4,000 spaces take 40 s). Here they are matched by patterns or scans that accept
exactly the same text (the tests compare them with the originals' expressions on random strings)
in linear or quadratic time.

Two optional packages of the originals are not needed: the reference-line similarity is the
normalised Indel similarity of ``Levenshtein.ratio`` / ``rapidfuzz.fuzz.ratio`` (here
:func:`indel_ratio`, a bit-parallel LCS), and the English word list (``nltk``'s ``words`` corpus,
which decides whether a page ending in a word gets a trailing space) is the ``words`` argument;
without it a space is appended, as both originals do when the corpus is not installed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Literal, overload

from vlmzoo.errors import ConfigError

Reference = Literal["nougat", "transformers"]

_PUNCT = re.compile(r"[.?!\n]")
_MISSING = "\n\n[MISSING_PAGE_POST]\n\n"
# A heading of over 100 characters is a paragraph the model marked up as a title.
_LONG_TITLE = re.compile(r"(?:\n|^)#+ \d*\W? ?(.{100,})")
# Bare numbered headings ("## 2.1", "# iv"). The original's `(?:\.?(?:\d|[ixv])+)*` is exponential
# on a failing run of digits; `(?:\.?[\dixv])*` accepts the same strings (dots never doubled or
# trailing) with one way to match each.
_BARE_HEADING = {
    "nougat": re.compile(r"^#+ (?:\.?[\dixv])*\s*(?:$|\n\s*)", re.M),
    "transformers": re.compile(r"^#+ (?:[\d+\.]+|[ixv\.]+)?\s*(?:$|\n\s*)", re.M),
}
_LONG_REFERENCE = re.compile(r"^\* \[\d+\](\s?[A-W]\.+\s?){10,}.*$", re.M)
_EMPTY_REF_BRACKETS = re.compile(r"^(\* \[\d+\])\[\](.*)$", re.M)
_STRAY_CHARACTER = re.compile(r"(^\w\n\n|\n\n\w$)")
_PMC_SUBSCRIPT = re.compile(r"([\s.,()])_([a-zA-Z0-9])__([a-zA-Z0-9]){1,3}_([\s.,:()])")
_PMC_SYMBOL = re.compile(r"([\s.,\d])_([a-zA-Z0-9])_([\s.,\d;])")
_FOOTNOTE_PREFIX = re.compile(r"(\nFootnote .*?:) (?:footnotetext|thanks):\W*(.*(?:\n\n|$))")
# facebookresearch/nougat's itemize pattern: a line "- a - b" (or with "*") of several items.
_LIST_LINE = re.compile(
    r"(?:^)(-|\*)?(?!-|\*) ?((?:\d|[ixv])+ )?.+? (-|\*) (((?:\d|[ixv])+)\.(\d|[ixv]) )?.*(?:$)", re.I | re.M
)
# A list numeral such as "2", "iv", "2.1".
_NUMERAL = re.compile(r"^[\dixv]+((?:\.[\dixv])?)+$", re.I | re.M)
_TABLE_START = re.compile(r"(^.+)\\begin{tab", re.M)
_SAB = re.compile(r"(\*\*S\. A\. B\.\*\*\n+){2,}")
_EMPTY_HEADING = re.compile(r"^#+( [\[\d\w])?$", re.M)
_LONE_PERIOD = re.compile(r"^\.\s*$", re.M)
_BLANK_LINES = re.compile(r"\n{3,}")
_REFERENCES_MISSING = re.compile(r"## References\n+\[MISSING_PAGE_POST(:\d+)?\]")
_NUMBERS = re.compile(r"(?:[\d_]|\*\*)")


@overload
def postprocess_nougat(
    generation: str,
    *,
    fix_markdown: bool = ...,
    words: Collection[str] | None = ...,
    reference: Reference = ...,
) -> str: ...
@overload
def postprocess_nougat(
    generation: Sequence[str],
    *,
    fix_markdown: bool = ...,
    words: Collection[str] | None = ...,
    reference: Reference = ...,
) -> list[str]: ...
def postprocess_nougat(
    generation: str | Sequence[str],
    *,
    fix_markdown: bool = True,
    words: Collection[str] | None = None,
    reference: Reference = "nougat",
) -> str | list[str]:
    """Clean one generated page (or a list of them) into Markdown.

    Args:
        generation: the decoded text of one page, or a list of pages (each cleaned on its own).
        fix_markdown: apply :func:`markdown_compatible` at the end.
        words: English words (e.g. ``set(nltk.corpus.words.words())``); a page whose last word is
            one gets a trailing space. None appends the space to every such page, as the originals
            do when nltk's corpus is missing.
        reference: ``"nougat"`` (facebookresearch/nougat) or ``"transformers"``; see the module
            docstring for the three steps where they differ.

    Returns:
        The cleaned page (a list for a list).
    """
    if reference not in _BARE_HEADING:
        raise ConfigError(f"reference={reference!r}: must be 'nougat' or 'transformers'")
    if not isinstance(generation, str):
        return [_one(g, fix_markdown, words, reference) for g in generation]
    return _one(generation, fix_markdown, words, reference)


def _one(text: str, fix_markdown: bool, words: Collection[str] | None, reference: Reference) -> str:
    text = _LONG_TITLE.sub(r"\n\1", text).strip()
    text = text.replace("\n* [leftmargin=*]\n", "\n")  # a LaTeX list option
    text = _BARE_HEADING[reference].sub("", text)
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1].startswith("#") and lines[-1].lstrip("#").startswith(" "):
        text = "\n".join(lines[:-1])  # a title the page ends on is most likely hallucinated
    text = truncate_repetitions(text, reference=reference)
    text = remove_hallucinated_references(text)
    text = _LONG_REFERENCE.sub("", text)
    text = _EMPTY_REF_BRACKETS.sub(r"\1\2", text)
    text = _STRAY_CHARACTER.sub("", text)
    # PMC math artefacts: " _x__1_ " -> " \(x_{1}\) ", " _x_ " -> " \(x\) ".
    text = _PMC_SUBSCRIPT.sub(r"\1\(\2_{\3}\)\4", text)
    text = _PMC_SYMBOL.sub(r"\1\(\2\)\3", text)
    text = _FOOTNOTE_PREFIX.sub(r"\1 \2", text)
    text = _remove_footnote_markup(text)
    text = _split_list_lines(text) if reference == "nougat" else _split_list_lines_transformers(text)
    text = _page_end(text, words)
    text = _correct_tables(text)
    text = text.replace("\\begin{array}[]{", "\\begin{array}{")
    text = _remove_empty_tabulars(text)
    text = _SAB.sub("", text)
    text = _EMPTY_HEADING.sub("", text)
    text = _LONE_PERIOD.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return markdown_compatible(text) if fix_markdown else text


def _page_end(text: str, words: Collection[str] | None) -> str:
    """The originals' spacing at the end of a page, so that pages concatenate."""
    if text.endswith((".", "}")):
        text += "\n\n"
    # re.match anchors at the start: only a one-character page (as in the originals).
    if re.match(r"[A-Z0-9,;:]$", text):
        return text + " "
    if text.startswith(("#", "**", "\\begin")):
        return "\n\n" + text
    if text.split("\n")[-1].startswith(("#", "Figure", "Table")):
        return text + "\n\n"
    if words is None or text.split(" ")[-1] in words:
        return text + " "
    return text


# --- repetitions ------------------------------------------------------------------------------
def truncate_repetitions(text: str, min_len: int = 30, *, reference: Reference = "nougat") -> str:
    """Cut a repeated tail (the loop a stuck decoder falls into) down to one copy.

    The longest ``L >= min_len`` (below half the length) for which the last ``L`` characters
    repeat the ``L`` before them (ignoring case) is the period; the tail made of whole periods is
    removed, then text is added back sentence by sentence (to the next ``.?!`` or newline) until a
    sentence that belongs to the repeated tail has been added. ``reference`` selects how the
    sentence's start is found (see the module docstring).
    """
    lower = text.lower()
    n = len(lower)
    if n < 2 * min_len:
        return text
    period = None
    for length in range(min_len, int(n / 2)):
        if lower[n - 2 * length : n - length] == lower[n - length :]:
            period = length
    if period is None:
        return text
    unit = lower[-period:]
    kept = lower
    while kept.endswith(unit):
        kept = kept[:-period]
    repeating_tail = lower[len(kept) :]
    reversed_lower = lower[::-1]
    while True:
        end = _next_punctuation(lower, len(kept))
        if reference == "nougat":
            start = _last_punctuation(lower, len(kept))
        else:  # an index into the reversed text, used on the text itself (transformers' rewrite)
            start = _next_punctuation(reversed_lower, len(kept))
        if not (end and start):
            break
        sentence = lower[start:end]
        kept = lower[: end + 1]
        if sentence in repeating_tail:
            break
    # Lengths are measured on the lower-cased text, as in the originals.
    return text[: len(kept)]


def _next_punctuation(s: str, start: int) -> int | None:
    m = _PUNCT.search(s, start)
    return m.start() if m else None


def _last_punctuation(s: str, start: int) -> int | None:
    """The last sentence end strictly before ``start``, never index 0 (as the original's loop)."""
    i = max(s.rfind(c, 1, start) for c in ".?!\n")
    return i if i > 0 else None


# --- hallucinated references ------------------------------------------------------------------
def indel_ratio(a: str, b: str) -> float:
    """Normalised Indel similarity ``1 - (insertions + deletions) / (len(a) + len(b))``, i.e.
    ``2 * LCS / (len(a) + len(b))`` (``Levenshtein.ratio``; ``rapidfuzz.fuzz.ratio`` / 100); 1.0
    for two empty strings."""
    total = len(a) + len(b)
    if total == 0:
        return 1.0
    return 1.0 - (total - 2 * _lcs_length(a, b)) / total


def _lcs_length(a: str, b: str) -> int:
    """Longest common subsequence, bit-parallel (Crochemore et al. 2001): one pass over the longer
    string with the positions of the shorter one's characters as bits of an integer."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    positions: dict[str, int] = {}
    for i, ch in enumerate(b):
        positions[ch] = positions.get(ch, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for ch in a:
        m = positions.get(ch)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def _remove_numbers(line: str) -> str:
    return _NUMBERS.sub("", line).strip()


def remove_hallucinated_references(text: str) -> str:
    """Replace runs of near-identical lines (more than 15, each 4-199 characters once digits,
    ``_`` and ``**`` are removed, Indel similarity > 0.9 to the next non-empty line) with
    ``[MISSING_PAGE_POST]``: the loop of invented references a stuck decoder writes."""
    lines = text.split("\n")
    clean = [_remove_numbers(line) for line in lines]
    deletions = [_run_text(lines, clean, run) for run in _similar_runs(clean)]
    for deletion in reversed(deletions):
        text = text.replace(deletion, _MISSING)
    return _REFERENCES_MISSING.sub("\n\n[MISSING_PAGE_POST\\1]", text)


def _similar_runs(clean: list[str]) -> list[tuple[int, int]]:
    """(first, last + 2) of each run of similar lines longer than 15 (gaps of up to 3 lines join runs)."""
    n = len(clean)
    marked = [False] * n
    for i in range(n - 1):
        j = i + 1
        while not clean[j] and j < n - 1:  # the next non-empty line
            j += 1
        a, b = clean[i], clean[j]
        if (
            3 < len(a) < 200
            and 3 < len(b) < 200
            and not a.startswith("[MISSING_PAGE")
            and (a == b or indel_ratio(a, b) > 0.9)
        ):
            marked[i:j] = [True] * (j - i)
    ids = [i for i, m in enumerate(marked) if m]
    if not ids:
        return []
    runs, first = [], 0
    for k in range(len(ids) - 1):
        if ids[k + 1] - ids[k] > 3:
            runs.append((ids[first], ids[k] + 2))
            first = k + 1
    runs.append((ids[first], ids[-1] + 2))
    return [r for r in runs if r[1] - r[0] > 15]


def _run_text(lines: list[str], clean: list[str], run: tuple[int, int]) -> str:
    """The text to delete for one run: widened to a "## References" heading or the first
    dissimilar line within 4 lines before it and 5 after, and cut where the last two lines
    stop agreeing (the next page's content)."""
    base = clean[run[0]]
    first, last = run
    starts_at_reference = False
    for i in range(max(0, run[0] - 1), max(0, run[0] - 5), -1):
        if not lines[i]:
            continue
        if lines[i] == "## References":
            first = i
            break
        if indel_ratio(base, _remove_numbers(lines[i])) < 0.9:
            first = i + 1
            previous = _remove_numbers(lines[max(0, i - 1)].partition("* [")[-1])
            if len(previous) >= 0.75 * len(base) and indel_ratio(base, previous) < 0.9:
                first = i
            starts_at_reference = True
            break
    for i in range(min(len(lines), run[1]), min(len(lines), run[1] + 5)):
        if indel_ratio(base, _remove_numbers(lines[i])) < 0.9:
            last = i
            break
    last = min(last, len(lines) - 1)
    deletion = "\n".join(lines[first : last + 1])
    # Walk the last two lines together, skipping digits, to where they part.
    chars_a, chars_b = iter(lines[last - 1]), enumerate(lines[last])
    parted_at = None
    try:
        while True:
            a = next(chars_a)
            while a.isnumeric():
                a = next(chars_a)
            parted_at, b = next(chars_b)
            while b.isnumeric():
                parted_at, b = next(chars_b)
            if a != b:
                break
    except StopIteration:
        pass
    if starts_at_reference and "* [" in deletion:
        deletion = "* [" + deletion.partition("* [")[-1]
    if parted_at is not None:
        tail = len(lines[last]) - parted_at - 1
        if tail > 0:
            deletion = deletion[:-tail]
    return deletion.strip()


# --- footnotes, lists, tables -----------------------------------------------------------------
def _remove_footnote_markup(text: str) -> str:
    """Delete ``[FOOTNOTE:...]...[ENDFOOTNOTE]`` within a line: the originals'
    ``\\[FOOTNOTE:.+?\\](.*?)\\[ENDFOOTNOTE\\]`` (cubic on repeated openings), as a scan. The
    label runs to the first ``]`` after at least one character; the first ``[ENDFOOTNOTE]``
    after it ends the match (a later ``]`` can only find a subset of the same ends)."""
    opening, closing = "[FOOTNOTE:", "[ENDFOOTNOTE]"
    out, kept_from, search_from = [], 0, 0
    while (start := text.find(opening, search_from)) >= 0:
        line_end = text.find("\n", start)
        line_end = len(text) if line_end < 0 else line_end
        label_end = text.find("]", start + len(opening) + 1, line_end)
        end = text.find(closing, label_end + 1, line_end) if label_end >= 0 else -1
        if end < 0:
            search_from = start + 1
            continue
        out.append(text[kept_from:start])
        kept_from = search_from = end + len(closing)
    out.append(text[kept_from:])
    return "".join(out)


def _list_items(items: list[str], delim: str, first_delim: str) -> str:
    """Items of one run-together list line, one per line, indented by their numeral's depth."""
    out = ""
    for i, item in enumerate(items):
        numeral, _, rest = item.strip().partition(" ")
        if not rest:  # a one-word item is dropped, as in the originals
            continue
        level = numeral.count(".") if _NUMERAL.match(numeral) else 0
        out += ("\n" if i > 0 else "") + "\t" * level + (delim if i > 0 else first_delim) + item.strip()
    return out


def _split_list_lines(text: str) -> str:
    """facebookresearch/nougat's itemize step: a line starting with ``-`` or ``*`` that holds
    ``" - "`` (or ``" * "``) later is split into one item per line."""
    for match in reversed(list(_LIST_LINE.finditer(text))):
        if match.group(1) is None:  # lines not starting with a bullet: too many false positives
            continue
        start, stop = match.span()
        delim = match.group(3) + " "
        # The first item keeps its bullet only at the very start of the page.
        first_delim = delim if start == 0 else match.group(1) + " "
        items = match.group(0).split(delim)[1:]
        text = text[:start] + _list_items(items, delim, first_delim) + (text[stop:] or "\n")
    return text


def _split_list_lines_transformers(text: str) -> str:
    """transformers' rewrite of the itemize step (``normalize_list_like_lines``), line by line."""
    lines = text.split("\n")
    out = []
    for number, line in enumerate(lines):
        match = re.search(r". ([-*]) ", line)
        if not match or line[0] not in "-*":
            out.append(line)
            continue
        delim = match.group(1) + " "
        first_delim = delim if number == 0 else line[0] + " "
        replacement = _list_items(line.split(delim)[1:], delim, first_delim)
        out.append(replacement + "\n" if number == len(lines) - 1 else replacement)
    return "\n".join(out)


def _correct_tables(text: str) -> str:
    for line in text.split("\n"):  # lines that cannot be a real table
        if line.count("\\begin{tabular}") > 15 or line.count("\\multicolumn") > 60 or line.count("&") > 400:
            text = text.replace(line, "")
    text = text.replace("\\begin{table} \\begin{tabular}", "\\begin{table}\n\\begin{tabular}")
    text = text.replace("\\end{tabular} \\end{table}", "\\end{tabular}\n\\end{table}")
    text = text.replace("\\end{table} Tab", "\\end{table}\nTab")
    text = _TABLE_START.sub(r"\1\n\\begin{tab", text)
    text = text.replace(r"\begin{tabular}{l l}  & \\ \end{tabular}", "")
    return text.replace("\\begin{tabular}{}\n\n\\end{tabular}", "")


def _remove_empty_tabulars(text: str) -> str:
    r"""Delete tabulars with two or more column specs and nothing but spaces and ``&`` inside: the
    originals' ``\\begin{tabular}{([clr ]){2,}}\s*[& ]*\s*(\\\\)? \\end{tabular}`` (cubic in a
    run of spaces), as a scan. The body before an optional ``\\`` and the required space must
    be whitespace, then ``&``/space, then whitespace."""
    opening, closing = "\\begin{tabular}{", "\\end{tabular}"
    out, kept_from, search_from = [], 0, 0
    while (start := text.find(opening, search_from)) >= 0:
        end = _empty_tabular_end(text, start + len(opening), closing)
        if end is None:
            search_from = start + 1
            continue
        out.append(text[kept_from:start])
        kept_from = search_from = end
    out.append(text[kept_from:])
    return "".join(out)


def _empty_tabular_end(text: str, spec: int, closing: str) -> int | None:
    n = len(text)
    i = spec
    while i < n and text[i] in "clr ":
        i += 1
    if i - spec < 2 or i >= n or text[i] != "}":
        return None
    body = i + 1
    i = body
    while i < n and (text[i] == "&" or text[i].isspace()):
        i += 1
    if text.startswith("\\\\ " + closing, i) and _blank_cells(text[body:i]):
        return i + 3 + len(closing)
    if text.startswith(closing, i) and i > body and text[i - 1] == " " and _blank_cells(text[body : i - 1]):
        return i + len(closing)
    return None


def _blank_cells(s: str) -> bool:
    r"""Whether ``s`` (whitespace and ``&`` only) is ``\s*[& ]*\s*``: the ``&`` all in one stretch
    that holds nothing but ``&`` and spaces."""
    first, last = s.find("&"), s.rfind("&")
    return first < 0 or all(c in "& " for c in s[first : last + 1])


# --- Markdown ---------------------------------------------------------------------------------
_EQUATION_TAG_BEFORE = re.compile(r"^\(([\d.]+[a-zA-Z]?)\) \\\[(.+?)\\\]$", re.M)
_EQUATION_TAG_AFTER = re.compile(r"^\\\[(.+?)\\\] \(([\d.]+[a-zA-Z]?)\)$", re.M)
_EQUATION_TAG_BETWEEN = re.compile(r"^\\\[(.+?)\\\] \(([\d.]+[a-zA-Z]?)\) (\\\[.+?\\\])$", re.M)
_BOLDMATH = re.compile(r"\\mbox{ ?\\boldmath\$(.*?)\$}")
_URL = re.compile(
    r"((?:http|ftp|https):\/\/(?:[\w_-]+(?:(?:\.[\w_-]+)+))(?:[\w.,@?^=%&:\/~+#-]*[\w@?^=%&\/~+#-]))"
)
_CODE_BLOCK = re.compile(r"```\s*(.+?)\s*```", re.S)


def markdown_compatible(text: str) -> str:
    r"""The originals' Markdown fixes: equation numbers into ``\tag{}``, ``\bm``/``\boldmath`` into
    ``\mathbf``, bare URLs into ``[url](url)`` links, and code blocks onto their own lines."""
    text = _EQUATION_TAG_BEFORE.sub(r"\[\2 \\tag{\1}\]", text)
    text = _EQUATION_TAG_AFTER.sub(r"\[\1 \\tag{\2}\]", text)
    text = _EQUATION_TAG_BETWEEN.sub(r"\[\1 \\tag{\2}\] \3", text)
    text = text.replace(r"\. ", ". ")
    text = text.replace(r"\bm{", r"\mathbf{").replace(r"{\\bm ", r"\mathbf{")
    text = _BOLDMATH.sub(r"\\mathbf{\1}", text)
    text = _URL.sub(r"[\1](\1)", text)
    return _code_blocks(text)


def _code_blocks(text: str) -> str:
    r"""The originals' ``re.sub(r"```\s*(.+?)\s*```", "```\n\1\n```", flags=re.S)`` without its
    cubic failures. A match starting at an opening exists exactly when another ``` starts at
    least 4 characters later (the lazy body can always end right before it), so the pattern is
    only tried where it is bound to match."""
    last = text.rfind("```")
    out, kept_from, search_from = [], 0, 0
    while 0 <= (start := text.find("```", search_from)) <= last - 4:
        match = _CODE_BLOCK.match(text, start)
        if match is None:  # cannot happen (see above); skip the opening like re.sub would
            search_from = start + 1
            continue
        out.append(text[kept_from:start])
        out.append(match.expand("```\n\\1\n```"))
        kept_from = search_from = match.end()
    out.append(text[kept_from:])
    return "".join(out)
