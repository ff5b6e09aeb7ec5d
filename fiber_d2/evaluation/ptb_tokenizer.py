"""The Stanford PTB tokenizer as coco-caption runs it before CIDEr, in Python (no Java).

coco-caption (pycocoevalcap `tokenizer/ptbtokenizer.py`) writes the captions one per line (a newline inside a caption
becomes a space), runs Stanford CoreNLP 3.4.1's `edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`
on them and drops the tokens of its `PUNCTUATIONS` list. This module follows the rules of that release's lexer
(`src/edu/stanford/nlp/process/PTBLexer.flex`, default options): at each position the rule with the longest match
wins, a rule's trailing context counting towards its length, ties going to the earlier rule; letters in the rules'
words match either case, character classes as written. So "man's" -> "man 's", "don't" -> "do n't", "cannot" ->
"can not", "t-shirt" stays whole, "U.S." keeps its period, "(" -> "-lrb-" (which coco-caption keeps: its list has
the upper-case "-LRB-"), quotes -> `` and '' (dropped).

Known differences from the Java program: characters are classified by Python's Unicode tables (letters, digits,
upper case) rather than Java's (characters beyond U+FFFF are dropped, as there); a vertical tab, form feed, carriage return or U+2028/U+2029 inside a caption is
a space here, where the Java program starts a new line and shifts every later caption onto the wrong line.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from typing import Callable, NamedTuple, Sequence

try:  # the parser of `re` patterns, to find the characters a rule can start with
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_constants as _sre
    import sre_parse as _sre_parse

# coco-caption's PUNCTUATIONS: tokens dropped after tokenisation.
PUNCTUATIONS = frozenset(("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                          "--", "...", ";"))
_LINE_BREAK = "\n"

Action = Callable[[str], tuple]  # matched text -> (token or None, number of characters consumed)


class _Rule(NamedTuple):
    patterns: tuple  # compiled alternatives: group 1 the token's text, group 2 (if any) the trailing context
    action: Action
    parsed: tuple  # each alternative as `re`'s parser reads it


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """coco-caption's tokenisation of `captions`: for each, its lower-cased PTB tokens without the `PUNCTUATIONS`,
    joined by single spaces. The captions are tokenised as one text, one per line, as coco-caption does; a rule may
    look past the end of a line ("plan B." gives "plan b" before a line starting "The ", "plan b." before "the "), so
    pass them in coco-caption's order for identical results."""
    text = _LINE_BREAK.join(caption.replace("\n", " ") for caption in captions)
    lines: list[list[str]] = [[]]
    for token in _lex(text):
        if token is _LINE_BREAK:
            lines.append([])
        else:
            lines[-1].append(token.lower())
    if len(lines) != len(captions):  # only when there is no caption: "" is one empty line
        lines = lines[: len(captions)]
    return [" ".join(token for token in line if token not in PUNCTUATIONS) for line in lines]


def _lex(text: str):
    """The lexer's tokens of `text`, with `_LINE_BREAK` (the object itself) at each line break."""
    position = 0
    while position < len(text):
        best_length, best_action, best_match = 0, None, None
        for pattern, action in _candidates(text[position]):
            match = pattern.match(text, position)
            if match is not None:
                length = match.end(match.lastindex) - position
                if length > best_length:
                    best_length, best_action, best_match = length, action, match
        token, consumed = best_action(best_match.group(1))
        if token is not None:
            yield token
        position += consumed


@functools.lru_cache(maxsize=None)
def _candidates(char: str) -> tuple:
    """(pattern, action) of every rule alternative that can match text starting with `char`, in rule order."""
    code = ord(char)
    return tuple(
        (pattern, rule.action)
        for rule in _rules()
        for pattern, parsed in zip(rule.patterns, rule.parsed)
        if _starts(parsed, code)[0]
    )


_CATEGORIES = {
    _sre.CATEGORY_SPACE: re.compile(r"\s"), _sre.CATEGORY_NOT_SPACE: re.compile(r"\S"),
    _sre.CATEGORY_DIGIT: re.compile(r"\d"), _sre.CATEGORY_NOT_DIGIT: re.compile(r"\D"),
    _sre.CATEGORY_WORD: re.compile(r"\w"), _sre.CATEGORY_NOT_WORD: re.compile(r"\W"),
}


def _starts(items, code: int) -> tuple:
    """(whether a match of the parsed sequence `items` can begin with the character `code`, whether it can be
    empty). Anything unexpected counts as "can begin", so no rule is ever left out wrongly."""
    for op, arg in items:
        if op is _sre.LITERAL:
            starts, empty = arg == code, False
        elif op is _sre.NOT_LITERAL:
            starts, empty = arg != code, False
        elif op is _sre.ANY:
            starts, empty = code != 10, False
        elif op is _sre.IN:
            starts, empty = _in_class(arg, code), False
        elif op is _sre.SUBPATTERN:
            starts, empty = _starts(arg[-1], code)
        elif op is _sre.BRANCH:
            results = [_starts(branch, code) for branch in arg[1]]
            starts, empty = any(r[0] for r in results), any(r[1] for r in results)
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
            starts, empty = _starts(arg[2], code)
            empty = empty or arg[0] == 0
        elif op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
            starts, empty = False, True  # zero-width (the lookaheads here only follow a rule's text)
        else:
            return True, True
        if starts:
            return True, empty
        if not empty:
            return False, False
    return False, True


def _in_class(items, code: int) -> bool:
    negate, hit = False, False
    for op, arg in items:
        if op is _sre.NEGATE:
            negate = True
        elif op is _sre.LITERAL:
            hit = hit or arg == code
        elif op is _sre.RANGE:
            hit = hit or arg[0] <= code <= arg[1]
        elif op is _sre.CATEGORY and arg in _CATEGORIES:
            hit = hit or _CATEGORIES[arg].match(chr(code)) is not None
        else:
            return True
    return hit != negate


# ---------------------------------------------------------------- actions

def _keep(text: str) -> tuple:
    return text, len(text)


def _skip(text: str) -> tuple:
    return None, len(text)


def _line_break(text: str) -> tuple:
    # Only the newline that joins two captions ends a line; see the module docstring for the others.
    return (_LINE_BREAK if text == "\n" else None), len(text)


def _replace(token: str) -> Action:
    return lambda text: (token, len(text))


def _push_back(count: int) -> Action:
    """Return all but the last `count` characters, which are read again (e.g. "cannot" -> "can", then "not")."""
    return lambda text: (text[:-count], len(text) - count)


def _period_read_again(text: str) -> tuple:
    """An abbreviation before a sentence end: the token keeps its period, and the period is read again as a token."""
    return text, len(text) - 1


def _acronym(text: str) -> tuple:
    """An acronym before a typical sentence start: "I." gives "I" (the period read next); longer ones keep their
    period and the period is read again."""
    return (text[0], 1) if len(text) == 2 else (text, len(text) - 1)


def _without_soft_hyphens(text: str) -> tuple:
    return (text.replace("\u00ad", "") or "-"), len(text)


_AMP = re.compile("&amp;", re.IGNORECASE)


def _normalized_amp(text: str) -> tuple:
    return _AMP.sub("&", text), len(text)


def _nbsp(text: str) -> tuple:
    return text.replace(" ", "\u00a0"), len(text)


_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$"}


def _fraction(text: str) -> tuple:
    return _FRACTIONS.get(text, text), len(text)


def _currency(text: str) -> tuple:
    return _CURRENCY.get(text, text), len(text)


def _parentheses(text: str) -> str:
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


def _phone(text: str) -> tuple:
    return _parentheses(text.replace(" ", "\u00a0")), len(text)


def _smiley(text: str) -> tuple:
    return _parentheses(text), len(text)


def _dashes(text: str) -> tuple:
    return ("--" if 3 <= len(text) <= 4 else text), len(text)


_SINGLE_QUOTE = re.compile("&apos;|'")
_DOUBLE_QUOTE = re.compile('"|&quot;')
_CURLY = [(re.compile("[\u0091\u2018\u201b\u2039]"), "`"), (re.compile("[\u0092\u2019\u203a]"), "'"),
          (re.compile("[\u0093\u201c\u00ab]"), "``"), (re.compile("[\u0094\u201d\u00bb]"), "''")]


def _quotes(probably_left: bool) -> Action:
    """LaTeX quotes: ' and " become ` and `` when probably opening, else ' and ''; curly quotes by their side."""
    def action(text: str) -> tuple:
        token = _SINGLE_QUOTE.sub("`" if probably_left else "'", text)
        token = _DOUBLE_QUOTE.sub("``" if probably_left else "''", token)
        for pattern, replacement in _CURLY:
            token = pattern.sub(replacement, token)
        return token, len(text)
    return action


# ---------------------------------------------------------------- patterns

def _char_class(predicate: Callable[[str], bool]) -> str:
    """The body of a regex character class of the Basic Multilingual Plane characters satisfying `predicate`."""
    ranges: list[list[int]] = []
    for code in range(0x10000):
        if predicate(chr(code)):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


def _caseless(pattern: str) -> str:
    """`pattern` with each ASCII letter outside character classes and escapes matching either case, as JFlex's
    %caseless does (character classes stay as written)."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            width = 6 if pattern[i + 1] == "u" else 2
            out.append(pattern[i : i + width])
            i += width
        elif char == "[":
            end = i + 1
            while pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            out.append(pattern[i : end + 1])
            i = end + 1
        elif char == "(" and pattern.startswith("(?", i):
            out.append(pattern[i : i + 3])
            i += 3
        elif char.isascii() and char.isalpha():
            out.append(f"[{char.lower()}{char.upper()}]")
            i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


# Characters the lexer adds to its letters: soft hyphen, combining marks and others (PTBLexer.flex's LETTER).
_EXTRA_LETTERS = (
    "\\u00ad\\u0237-\\u024f\\u02c2-\\u02c5\\u02d2-\\u02df\\u02e5-\\u02ff\\u0300-\\u036f\\u0370-\\u037d\\u0384\\u0385"
    "\\u03cf\\u03f6\\u03fc-\\u03ff\\u0483-\\u0487\\u04cf\\u04f6-\\u04ff\\u0510-\\u0525\\u055a-\\u055f\\u0591-\\u05bd"
    "\\u05bf\\u05c1\\u05c2\\u05c4\\u05c5\\u05c7\\u0615-\\u061a\\u063b-\\u063f\\u064b-\\u065e\\u0670\\u06d6-\\u06ef"
    "\\u06fa-\\u06ff\\u070f\\u0711\\u0730-\\u074f\\u0750-\\u077f\\u07a6-\\u07b1\\u07ca-\\u07f5\\u07fa\\u0900-\\u0903"
    "\\u093c\\u093e-\\u094e\\u0951-\\u0955\\u0962-\\u0963\\u0981-\\u0983\\u09bc-\\u09c4\\u09c7\\u09c8\\u09cb-\\u09cd"
    "\\u09d7\\u09e2\\u09e3\\u0a01-\\u0a03\\u0a3c\\u0a3e-\\u0a4f\\u0a81-\\u0a83\\u0abc-\\u0acf\\u0b82\\u0bbe-\\u0bc2"
    "\\u0bc6-\\u0bc8\\u0bca-\\u0bcd\\u0c01-\\u0c03\\u0c3e-\\u0c56\\u0d3e-\\u0d44\\u0d46-\\u0d48\\u0e30-\\u0e3a"
    "\\u0e47-\\u0e4e\\u0eb1-\\u0ebc\\u0ec8-\\u0ecd"
)
_MISC_SYMBOLS = (
    "+%&~\\^|\\\\\\u00a6\\u00a7\\u00a8\\u00a9\\u00ac\\u00ae\\u00af\\u00b0-\\u00ba\\u00d7\\u00f7\\u0387\\u05be\\u05c0"
    "\\u05c3\\u05c6\\u05f3\\u05f4\\u0600-\\u0603\\u0606-\\u060a\\u060c\\u0614\\u061b\\u061e\\u066a\\u066d"
    "\\u0703-\\u070d\\u07f6-\\u07f8\\u0964\\u0965\\u0e4f\\u1fbd\\u2016\\u2017\\u2020-\\u2023\\u2030-\\u2038\\u203b"
    "\\u203e-\\u2042\\u2044\\u207a-\\u207f\\u208a-\\u208e\\u2100-\\u214f\\u2190-\\u21ff\\u2200-\\u2bff\\u3012\\u30fb"
    "\\uff01-\\uff0f\\uff1a-\\uff20\\uff3b-\\uff40\\uff5b-\\uff65"
)


@functools.lru_cache(maxsize=None)
def _rules() -> tuple:
    """The lexer's rules in PTBLexer.flex's order (compiled on first use)."""
    letter = _char_class(lambda c: unicodedata.category(c).startswith("L"))  # Java's [:letter:]
    digit_body = _char_class(lambda c: unicodedata.category(c) == "Nd")  # [:digit:]
    upper = _char_class(lambda c: unicodedata.category(c) == "Lu")  # [:uppercase:]
    digit = f"[{digit_body}]"
    splet = "&[aeiouAEIOU](?:acute|grave|uml);"
    letter_x = f"(?:[{letter}{_EXTRA_LETTERS}]|{splet})"  # the LETTER macro
    letter_or_digit_x = f"(?:[{letter}{_EXTRA_LETTERS}{digit_body}]|{splet})"
    letter_or_digit = f"[{letter}{digit_body}]"
    space = "[ \\t\\u00a0\\u2000-\\u200a\\u3000]"
    newline = "(?:\\r\\n|[\\r\\n\\u2028\\u2029\\u000b\\u000c\\u0085])"
    spacenl = f"(?:{space}|{newline})"
    sgml = ("<(?:[!?][A-Za-z\\-][^>\\r\\n]*|[A-Za-z][A-Za-z0-9_:.\\-]*(?: +(?:[A-Za-z][A-Za-z0-9_:.\\-]* *= *"
            "(?:'[^']*'|\"[^\"]*\")|[A-Za-z][A-Za-z0-9_:.\\-]*))* */?|/[A-Za-z][A-Za-z0-9_:.\\-]*) *>")
    sentend = f"{spacenl}(?:{spacenl}|[{upper}]|{sgml})"
    num = f"{digit}*(?:[.:,\\u00ad\\u066b\\u066c]{digit}+)+|{digit}+"
    word = f"{letter_x}{letter_or_digit_x}*(?:[.!?]{letter_x}{letter_or_digit_x}*)*"
    apos = "(?:['\\u0092\\u2019]|&apos;)"
    apos_etc = f"(?:{apos}|[`\\u0091\\u2018\\u201b])"
    hyphen = "[\\-_\\u058a\\u2010\\u2011]"
    thing_part = f"(?:[dDoOlL]{apos_etc}{letter_or_digit})?{letter_or_digit}+"
    thing = f"{thing_part}(?:{hyphen}{thing_part})*"
    thinga = "[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"
    thing3 = "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
    acro_special = "(?:Canada|Sino|Korean|EU|Japan|non)-U\\.S|U\\.S\\.-(?:U\\.K|U\\.S\\.S\\.R)"
    acros = [acro_special, "[A-Za-z](?:\\.[A-Za-z])*"]  # ACRO; its alternatives stay apart so the longest wins
    acro2 = f"{acro_special}|[A-Za-z](?:\\.[A-Za-z])+"
    hthing = f"[A-Za-z0-9][A-Za-z0-9.,\\u00ad]*(?:-(?:(?:{acro2})\\.|[A-Za-z0-9\\u00ad]+))+"
    redaux = f"{apos}(?:[msdMSD]|re|ve|ll)"
    sword = "[A-Za-z\\u00ad]*[A-MO-Za-mo-z]\\u00ad*"
    sredaux = f"n{apos_etc}t"
    filename_ext = ("bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|"
                    "png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
    filename = f"{letter_or_digit_x}+(?:\\.{letter_or_digit_x}+)*\\.(?:{filename_ext})"
    abbrev1 = (
        "(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri|"
        "Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn|[M]iss|Mo|"
        "Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo|"
        "Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys|tel|est|ext|sq|"
        "Jr|Sr|Bros|(?:Ed|Ph)\\.D|Blvd|Rd|Esq|etc|al|seq|Bldg)\\."
    )
    abtitle = ("Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|"
               "Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|"
               "Sfc")
    abbrev4 = [abtitle, "vs|Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS|Ph", *acros, "Invt|Elec|Natl|M[ft]g|Dept"]
    sentence_start = (
        "(?:[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|[H]owever|"
        "[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|[S]he|[S]ince|[S]o|"
        "[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|"
        f"[Y]ou|{sgml})"
    )
    insentp = "[,;:\\u3001]"
    misc_quote = ("[`\\u2018\\u2019\\u201a\\u201b\\u201c\\u201d\\u0091\\u0092\\u0093\\u0094\\u201e\\u201f\\u2039\\u203a"
                  "\\u00ab\\u00bb]")
    asian = "\\-\\^x=~<>'"
    soft = _without_soft_hyphens

    table = [
        # (alternatives, trailing context or None, action), in PTBLexer.flex's order
        (["c[+][+]"], None, _keep),
        (["(?:c|f)#"], None, _keep),
        (["cannot"], None, _push_back(3)),
        (["'twas"], None, _push_back(3)),
        (["'tis"], None, _push_back(2)),
        (["gonna|gotta|lemme|gimme|wanna"], None, _push_back(2)),
        ([sgml], None, _nbsp),
        (["&(?:MD|mdash|ndash);", "[\\u0096\\u0097\\u2013\\u2014\\u2015]"], None, _replace("--")),
        (["&amp;"], None, _normalized_amp),
        (["&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"], None, _keep),
        ([word], redaux, soft),
        ([sword], sredaux, soft),
        ([word], None, soft),
        ([f"{apos}n{apos}?", f"[lLdDjJ]{apos}", f"Dunkin{apos}", f"somethin{apos}", f"ol{apos}", f"{apos}em",
          f"[A-HJ-XZn]{apos_etc}[{letter}]{{2}}[{letter}]*", f"{apos}[2-9]0s", f"{apos}till?",
          f"[{letter}][{letter}]*[aeiouyAEIOUY]{apos_etc}[aeiouA-Z][{letter}]*", f"{apos}cause", "cont'd\\.?",
          "'twas", "nor'easter", "c'mon", "e'er", "s'mores", "ev'ry", "li'l", "nat'l", f"O{apos_etc}o"], None, _keep),
        ([f"y{apos}"], f"[{letter}]", _keep),
        (['https?://[^ \\t\\n\\f\\r"<>|(){}]+[^ \\t\\n\\f\\r"<>|.!?(){},\\-]'], None, _keep),
        (['(?:www\\.(?:[^ \\t\\n\\f\\r"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4}'
          '|(?:[^ \\t\\n\\f\\r"`\'<>|.!?(){},-_$]+\\.)+(?:com|net|org|edu))'
          '(?:/[^ \\t\\n\\f\\r"<>|()]+[^ \\t\\n\\f\\r"<>|.!?(){},\\-])?'], None, _keep),
        (['(?:&lt;|<)?[a-zA-Z0-9][^ \\t\\n\\f\\r"<>|()\\u00a0{}]*@(?:[^ \\t\\n\\f\\r"<>|(){}.\\u00a0]+\\.)*'
          '[^ \\t\\n\\f\\r"<>|(){}.\\u00a0]+(?:&gt;|>)?'], None, _keep),
        (["@[a-zA-Z_][a-zA-Z_0-9]*", f"#{letter_x}+"], None, _keep),
        ([redaux], "[^A-Za-z]", _quotes(False)),
        ([sredaux], "[^A-Za-z]", _quotes(False)),
        ([f"{digit}{{1,2}}[\\-/]{digit}{{1,2}}[\\-/]{digit}{{2,4}}"], None, _keep),
        ([f"[\\-+]?(?:{num})"], None, soft),
        (["[\\u207a\\u207b\\u208a\\u208b]?(?:[\\u2070\\u00b9\\u00b2\\u00b3\\u2074-\\u2079]+|[\\u2080-\\u2089]+)"],
         None, _keep),
        ([f"(?:{digit}{{1,4}}[\\- \\u00a0])?{digit}{{1,4}}(?:\\\\?/|\\u2044){digit}{{1,4}}"], None, _nbsp),
        (["[\\u00bc\\u00bd\\u00be\\u2153-\\u215e]"], None, _fraction),
        (["-(?:RRB|LRB|RCB|LCB|RSB|LSB)-", "C\\.D\\.s", "pro-", "anti-", "S(?:&amp;|&)P-500", "S(?:&amp;|&)Ls",
          f"Cap{apos}n", f"c{apos}est"], None, _normalized_amp),
        ([thing3], None, _keep),
        (["[A-Z]*\\$|#"], None, _keep),
        (["[\\u00a2\\u00a3\\u00a4\\u00a5\\u0080\\u20a0\\u20ac\\u060b\\u0e3f\\u20a4\\uffe0\\uffe1\\uffe5\\uffe6]"], None,
         _currency),
        ([f"(?:{a})\\." for a in acros], f"{spacenl}+{sentence_start}{spacenl}", _acronym),
        (["(?:ca|figs?|prop|nos?|art|bldg|prop|pp|op)\\."], f"{spacenl}?{digit}", _keep),
        (["(?:pt[eyEY]|co)\\."], f"{space}(?:ltd|lim)", _keep),
        ([abbrev1], sentend, _period_read_again),
        ([abbrev1], "[\\s\\S]{2}", _keep),
        ([abbrev1], None, _period_read_again),
        ([f"(?:{a})\\." for a in abbrev4], None, _keep),
        ([f"(?:{a})" for a in abbrev4], space, _keep),
        ([f"(?:{a})" for a in acros], spacenl, _keep),
        ([f"{apos}[0-9][0-9]"], spacenl, _keep),
        ([filename], f"(?:{spacenl}|[.?!,])", _keep),
        ([f"{word}\\."], insentp, soft),
        (["(?:\\([0-9]{2,3}\\)[ \\u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[\\- \\u00a0])?[0-9]{2,4}[\\- \\u00a0])"
          "[0-9]{3,4}[\\- \\u00a0]?[0-9]{3,5}",
          "(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}"], None, _phone),
        (['"|&quot;'], "[A-Za-z0-9$]", _quotes(True)),
        (['"|&quot;'], None, _quotes(False)),
        (["\\u007f"], None, _skip),
        (["<|&lt;"], None, _replace("<")),
        ([">|&gt;"], None, _replace(">")),
        (["[<>]?[:;=][\\-o*']?[()DPdpO\\\\{@|\\[\\]]"], "[^A-Za-z0-9]", _smiley),
        ([f"[\\^x=~<>]\\.\\[\\^x=~<>\\]", f"[{asian}]_[{asian}]", f"\\([{asian}][_.]?[{asian}]\\)",
          "\\([\\^x=~<>']-[\\^x=~<>'`]\\)"], None, _smiley),
        (["\\{"], None, _replace("-LCB-")),
        (["\\}"], None, _replace("-RCB-")),
        (["\\["], None, _replace("-LSB-")),
        (["\\]"], None, _replace("-RSB-")),
        (["\\("], None, _replace("-LRB-")),
        (["\\)"], None, _replace("-RRB-")),
        (["-+"], None, _dashes),
        (["\\.{3,5}", "(?:\\.[ \\u00a0]){2,4}\\.", "[\\u0085\\u2026]"], None, _replace("...")),
        (["@+", "#+", "_+"], None, _keep),
        (["\\*+", "(?:\\\\\\*){1,3}"], None, _keep),
        ([insentp], None, _keep),
        (["[?!]+"], None, _keep),
        (["[.\\u00a1\\u00bf\\u037e\\u0589\\u061f\\u06d4\\u0700-\\u0702\\u07fa\\u3002]"], None, _keep),
        (["="], None, _keep),
        (["/"], None, _keep),
        ([f"{hthing}\\."], insentp, soft),
        ([hthing], None, soft),
        ([f"{thing}\\."], insentp, _keep),
        ([thing], None, _keep),
        ([f"{thinga}\\."], insentp, _normalized_amp),
        ([thinga], None, _normalized_amp),
        (["'"], "[A-Za-z][^ \\t\\n\\r\\u00a0]", _quotes(True)),
        ([redaux], None, _quotes(False)),
        ([sredaux], None, _quotes(False)),
        (["''", f"{misc_quote}{{1,2}}", apos], None, _quotes(False)),
        (["<<|>>"], None, _keep),
        ([f"[{_MISC_SYMBOLS}]"], None, _keep),
        (["\\u0000", f"{space}+", "[\\u200b\\u200e\\u200f\\ufeff]"], None, _skip),
        ([newline], None, _line_break),
        (["&nbsp;"], None, _skip),
        (["[^\\n]"], None, _skip),  # untokenizable: deleted
    ]
    rules = []
    for alternatives, context, action in table:
        tail = "" if context is None else f"(?=({_caseless(context)}))"
        patterns = tuple(re.compile(f"({_caseless(alternative)}){tail}") for alternative in alternatives)
        rules.append(_Rule(patterns, action, tuple(tuple(_sre_parse.parse(p.pattern)) for p in patterns)))
    return tuple(rules)
