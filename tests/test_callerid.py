"""Customer names made safe for FreeSWITCH (fs_crm.freeswitch.callerid): what survives, what never does."""

import random
import unicodedata

import pytest

from fs_crm.freeswitch.callerid import MAX_LENGTH, customer_name, quoted, safe_name

NAMES = [
    ("Иван Петров", "Иван Петров"),
    ("Zoë Saldaña", "Zoë Saldaña"),
    ("李小龍", "李小龍"),
    ("Анна-Мария", "Анна-Мария"),
    ("Анна\u2011Мария", "Анна-Мария"),               # a non-breaking hyphen: a plain one
    ("J. R. R. Tolkien", "J. R. R. Tolkien"),
    ("O'Brien", "O\u2019Brien"),                    # a quote no more, still an apostrophe
    ("d\u2018Artagnan", "d\u2019Artagnan"),
    ("Jose\u0301", "Jos\u00e9"),                     # composed (NFC): one character, as phones expect
    ("Ann \"Boss\" Lee", "Ann Boss Lee"),
    ("a,b}c{d[e]f<g>h", "abcdefgh"),
    ("^^:x=y", "xy"),
    ("${system(id)}", "systemid"),
    ("name)&bridge(sofia/gateway/x/1)", "namebridgesofiagatewayx1"),
    ("%0D%0AVia: x", "0D0AVia x"),
    ("x\\ny \\s z", "xny s z"),
    ("Ivan\nPetrov\r\n", "Ivan Petrov"),
    ("Ivan\tPetrov\u2028Jr\u00a0\u3000", "Ivan Petrov Jr"),
    ("A|B;C@d/e:f=g_h", "ABCdefgh"),
    ("\u202eevil\u200b\u200d\ufeff", "evil"),          # bidi override, zero-width characters
    ("   Ivan    Petrov   ", "Ivan Petrov"),
    ("_undef_", "undef"),
    ("007", "007"),
    ("\u0661\u0662\u0663", "\u0661\u0662\u0663"),
]


@pytest.mark.parametrize("raw,shown", NAMES)
def test_given_crm_name_when_made_safe_then_letters_kept_and_freeswitch_syntax_gone(raw, shown):
    assert safe_name(raw) == shown


@pytest.mark.parametrize("raw", ["", "   ", "{}", "$$", "''", "\n\t", "...", "- -", "\u200b", None, 7, ["Ivan"]])
def test_given_nothing_readable_when_made_safe_then_no_name(raw):
    assert safe_name(raw) is None


def test_given_very_long_name_when_made_safe_then_cut_to_the_cap():
    assert safe_name("Ж" * 500) == "Ж" * MAX_LENGTH
    assert safe_name("Ivan " + "x" * (MAX_LENGTH - 5) + " Petrov") == "Ivan " + "x" * (MAX_LENGTH - 5)
    assert safe_name("Ivan" + " " * 36 + "Petrov") == "Ivan Petrov"


ALLOWED_PUNCTUATION = set(" .-\u2019")


def test_given_any_characters_when_made_safe_then_only_letters_digits_and_four_marks_remain():
    rng = random.Random(20261202)
    alphabet = [chr(c) for c in range(0x0, 0x3000) if not 0xD800 <= c <= 0xDFFF] + list("\u202e\u2066\ufeff\uff04")
    for _ in range(3000):
        name = safe_name("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))))
        if name is None:
            continue
        assert len(name) <= MAX_LENGTH and name == name.strip() and "  " not in name, repr(name)
        for ch in name:
            assert ch in ALLOWED_PUNCTUATION or unicodedata.category(ch)[0] in "LMN", repr(name)
        assert not set(name) & set("'\"{}[]<>()$%^\\|,;:=@/&_`\n\r\t")
        assert quoted(name) == "'%s'" % name


def test_given_unsafe_text_when_quoted_then_refused():
    for unsafe in ("O'Brien", "a}b", "x\ny", " Ivan"):
        with pytest.raises(ValueError):
            quoted(unsafe)


@pytest.mark.parametrize("found,shown", [
    ({"id": 7, "firstName": "Иван", "lastName": "Петров", "patronymic": "Сергеевич"}, "Иван Петров"),
    ({"id": 7, "firstName": "Иван"}, "Иван"),
    ({"id": 7, "lastName": "Петров"}, "Петров"),
    ({"id": 7, "firstName": None, "lastName": 5}, None),
    ({"id": 7, "email": "a@b.c"}, None),
    (None, None),
    ([], None),
])
def test_given_crm_customer_when_named_then_first_and_last_name(found, shown):
    assert customer_name(found) == shown
