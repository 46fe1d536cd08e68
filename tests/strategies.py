"""Hypothesis strategies of hostile values, and the rules an accepted value must obey.

Used by tests/test_hostile_sql.py and tests/test_hostile_cli.py. Every strategy
mixes well-formed values (so acceptance and its round trip are exercised), near
misses (one hostile piece spliced into a good value) and plainly hostile values:
shell metacharacters, "." and ".." components, control and invisible characters,
confusable letters, huge strings. NUL is left out: PostgreSQL text cannot hold
it and psycopg refuses it before sending (tested once, on its own).

The oracles below restate the documented syntax rules (docs/sqlstates.md,
db/functions/020_validation.sql) in Python, independently of the SQL.
"""

from __future__ import annotations

import re
import unicodedata

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# deterministic in CI, no example database, no per-example deadline (huge strings take a while)
HOSTILE = settings(database=None, derandomize=True, deadline=None, print_blob=False,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much, HealthCheck.large_base_example])

SHELL = [";", "$(id)", "`id`", "|", "&", "&&", "||", "\n", "'", '"', "\\", "$IFS", "${PATH}", ">", "<",
         "*", "?", "~", "#", "!", "$", "(", ")", " ", "{}", "%s", "%n", "-rf", "--", "=", ",", ":",
         "; rm -rf /", "$(reboot)", "`reboot`", "| nc evil 1", "&& halt", "'; DROP TABLE places; --"]
PATHISH = ["..", ".", "/", "//", "/..", "../", "./", "/./", "/../", "~root", "\\..\\", "/etc/passwd"]
CONTROL = [chr(c) for c in (1, 7, 8, 9, 10, 11, 12, 13, 27, 31, 127, 0x80, 0x85, 0x9f)] + [
    "\u00ad", "\u200b", "\u200d", "\u2028", "\u2029", "\u202e", "\u2066", "\ufeff", "\U000e0041", "\x1b[31m"]
CONFUSABLE = ["\uff45", "\u0435", "\u0440", "\u0131", "\u0130", "\u212a", "\ufb01", "\u00df", "\u00e9",
              "e\u0301", "\u00a0", "\u3000", "\u65e5\u672c", "\U0001f389", "xn--", "-", "_", "@", "%", "+"]
PIECES = SHELL + PATHISH + CONTROL + CONFUSABLE

HUGE_LENGTHS = [63, 64, 65, 200, 201, 253, 254, 1000, 1001, 1024, 1025, 10_000, 10_001, 100_000, 1_000_000]
HUGE_UNITS = ["a", "a.", "/a", "-", "\u00e9", ";", "\n", "ab-", "\u65e5", "/.."]

# numbers around every range the schema has (ports, modes, uid/gid, days) and int4's ends
INT_EDGES = [-2**31, -65536, -1, 0, 1, 22, 25, 443, 511, 512, 0o600, 0o640, 0o777, 0o1000, 0o4755,
             0o7777, 999, 3650, 3651, 65535, 65536, 2**31 - 1]


def no_nul_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Any text PostgreSQL can hold: every Unicode character except NUL and lone surrogates."""
    return st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=max_size)


def pieces() -> st.SearchStrategy[str]:
    return st.sampled_from(PIECES)


def huge(lengths=HUGE_LENGTHS) -> st.SearchStrategy[str]:
    """Strings of 63 to 1,000,000 characters, just at and beyond every length limit."""
    return st.builds(lambda unit, n: (unit * n)[:n], st.sampled_from(HUGE_UNITS), st.sampled_from(lengths))


def splice(good: str, piece: str, at: int) -> str:
    at %= len(good) + 1
    return good[:at] + piece + good[at:]


splice_at = st.tuples(st.sampled_from(PIECES), st.integers(0, 300))


def spliced(good: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A good value with one hostile piece put in somewhere: the near miss."""
    return st.builds(splice, good, st.sampled_from(PIECES), st.integers(0, 300))


def hostile(good: st.SearchStrategy[str], huge_values: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str]:
    """Good values, near misses, hostile pieces and their concatenations, arbitrary text, huge strings."""
    return st.one_of(
        good,
        spliced(good),
        pieces(),
        st.lists(st.one_of(pieces(), good), min_size=1, max_size=5).map("".join),
        no_nul_text(),
        huge_values if huge_values is not None else huge(),
    )


# --------------------------------------------------------------------------- well-formed values

# plain text strategies rather than st.from_regex: the regex strategies cost ten times more per example
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _chars(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(alphabet), min_size=min_size, max_size=max_size)


def _label(text: str) -> str:
    return text.strip("-") or "a"


label = _chars(ALNUM + "-", 1, 10).map(_label)
# 57 to 64 characters: at and just beyond the 63 of a DNS label
long_label = st.builds(lambda text, n: _label((text * 64)[:n]), _chars(ALNUM + "-", 1, 5), st.integers(57, 64))


def host_names(wildcard: bool = False) -> st.SearchStrategy[str]:
    name = st.lists(st.one_of(label, label, label, long_label), min_size=1, max_size=4).map(".".join)
    if wildcard:
        name = st.one_of(name, name.map(lambda n: "*." + n))
    return name


simple_names = st.builds(str.__add__, st.sampled_from(ALNUM), _chars(ALNUM + "._@-", 0, 20))
ca_names = st.builds(str.__add__, st.sampled_from(ALNUM), _chars(ALNUM + " ._-", 0, 20))
path_part = _chars(ALNUM + "_. {}@+-", 1, 12).filter(lambda p: p not in (".", ".."))
abs_paths = st.lists(path_part, max_size=5).map(lambda parts: "/" + "/".join(parts))
words = _chars(ALNUM + "_/.-", 1, 10)
# an operator's reload command is a shell command by design: metacharacters are fine, control characters not
reload_commands = st.lists(st.one_of(words, words, st.sampled_from([s for s in SHELL if s != "\n"])),
                           min_size=1, max_size=8).map(" ".join)
free_text = st.text(st.characters(exclude_categories=("Cs", "Cc", "Cf", "Zl", "Zp")), max_size=60)
ints = st.one_of(st.sampled_from(INT_EDGES), st.integers(-2**31, 2**31 - 1), st.integers(-5, 70000))


# (proto, separator, TTL, usage, selector, matching type) of a TLSA prefix: mostly in range, some not
good_tlsa_fields = st.tuples(st.sampled_from(["tcp", "udp", "sctp", "TCP"]), st.sampled_from([" ", "  ", "\t"]),
                              st.one_of(st.sampled_from([0, 300, 3600, 2**31 - 1]), st.integers(0, 2**31 - 1)),
                              st.integers(0, 3), st.integers(0, 1), st.integers(0, 2))
_any_tlsa_fields = st.tuples(st.sampled_from(["tcp", "udp", "sctp", "TCP", "icmp"]), st.sampled_from([" ", "  ", "\t"]),
                             st.one_of(st.sampled_from([0, 300, 3600, 2**31 - 1, 2**31, 9999999999]), st.integers(0, 10**10)),
                             st.integers(0, 999), st.integers(0, 2), st.integers(0, 3))
tlsa_fields = st.one_of(good_tlsa_fields, good_tlsa_fields, _any_tlsa_fields)


def tlsa_prefix(port: int, fields: tuple) -> str:
    proto, sep, ttl, usage, selector, matching = fields
    return f"_{port}._{proto}.{{}}.{sep}{ttl}{sep}IN{sep}TLSA{sep}{usage}{sep}{selector}{sep}{matching}"


tlsa_prefixes = st.builds(tlsa_prefix, st.one_of(st.sampled_from([25, 443, 8443]), st.integers(0, 99999)), tlsa_fields)


# --------------------------------------------------------------------------- the rules, restated

UNPRINTABLE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")
LDH = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
SIMPLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
TLSA = re.compile(r"_([1-9][0-9]{0,4})\._(tcp|udp|sctp)\.\{\}\.[ \t]+([0-9]{1,10})[ \t]+IN[ \t]+TLSA[ \t]+"
                  r"([0-9]{1,3})[ \t]+([0-9]{1,3})[ \t]+([0-9]{1,3})", re.IGNORECASE)
# characters that mean nothing to a POSIX shell, in any quoting context
SHELL_INERT = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")


def unprintable(value: str) -> bool:
    """Holds a control or invisible character (Unicode Cc, Cf, Zl, Zp)."""
    return any(unicodedata.category(c) in UNPRINTABLE_CATEGORIES for c in value)


def is_printable(value: str | None, max_length: int) -> bool:
    return value is None or (not unprintable(value) and len(value) <= max_length)


def is_required(value: str | None) -> bool:
    return value is not None and value.strip(" ") != ""


def is_host_name(value: str | None, wildcard: bool = False) -> bool:
    if not is_required(value) or not is_printable(value, 253):
        return False
    labels = value.split(".")
    for i, part in enumerate(labels):
        if part == "*" and i == 0 and wildcard and len(labels) > 2:
            continue
        if len(part) > 63 or not LDH.fullmatch(part):
            return False
    return True


def is_simple_name(value: str | None, max_length: int = 64) -> bool:
    return is_required(value) and is_printable(value, max_length) and SIMPLE.fullmatch(value) is not None


def is_ca_name(value: str | None) -> bool:
    return (is_required(value) and is_printable(value, 64) and "/" not in value and "\\" not in value
            and not value.startswith((" ", ".")))


def is_subject_name(value: str | None, subject_type: str) -> bool:
    if subject_type == "client":
        return is_simple_name(value)
    if subject_type == "CA":
        return is_ca_name(value)
    return is_host_name(value, wildcard=True)


def is_abs_path(value: str | None) -> bool:
    if value is None:
        return True
    return (not unprintable(value) and len(value) <= 1024 and value.startswith("/")
            and re.search(r"(^|/)\.\.?(/|$)", value) is None and "//" not in value)


def is_key_mode(value: int | None) -> bool:
    """A place's key file mode: 0..0777 and nothing for others (triggers/020_config_validation)."""
    return value is None or (0 <= value <= 0o777 and value & 0o007 == 0)


def is_tlsa_prefix(value: str | None, port: int) -> bool:
    if not is_required(value) or not is_printable(value, 200):
        return False
    m = TLSA.fullmatch(value)
    return (m is not None and int(m[1]) == port and int(m[3]) <= 2**31 - 1
            and int(m[4]) <= 3 and int(m[5]) <= 1 and int(m[6]) <= 2)


def one_hostile(fields: dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]) -> st.SearchStrategy[dict]:
    """Records {field: value}: every field good, or all good but one hostile, or each either way.

    fields maps each name to (good, hostile). Drawing the mode first keeps a steady share of
    wholly good records (acceptance and its round trip) next to the near misses.
    """
    names = list(fields)
    mixed = {name: st.one_of(good, bad) for name, (good, bad) in fields.items()}
    modes = st.sampled_from(["good", "mixed", *names])

    @st.composite
    def records(draw) -> dict:
        mode = draw(modes)
        out = {}
        for name, (good, bad) in fields.items():
            out[name] = draw(mixed[name] if mode == "mixed" else bad if mode == name else good)
        return out

    return records()
