"""Customer information normalized and hashed as Meta documents, checked on Meta's examples."""

from __future__ import annotations

import pytest

from waconv.customers.normalize import hash_all, hashed, normalize, phone_digits, wa_id_candidates

# Meta's "Customer Information Parameters" examples (meta-api.md section 4).
META_EXAMPLES = [
    (
        "em",
        "John_Smith@gmail.com",
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
    ),
    ("ph", "16505551212", "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"),
    ("fn", "Mary", "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"),
    ("db", "1997-02-16", "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c"),
    ("country", "US", "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
]


@pytest.mark.parametrize(("field", "plain", "digest"), META_EXAMPLES)
def test_meta_examples(field: str, plain: str, digest: str) -> None:
    assert hashed(field, plain) == digest


def test_meta_phone_example_in_its_national_form() -> None:
    # Meta's "(650)555-1212" needs its country: the default region gives it.
    assert hashed("ph", "(650)555-1212", default_region="US") == META_EXAMPLES[1][2]
    assert hashed("ph", " +1 (650) 555-1212 ") == META_EXAMPLES[1][2]


def test_valery_is_hashed_composed() -> None:
    decomposed = "Vale\u0301ry"  # e + combining acute: what some keyboards produce
    assert hashed("fn", decomposed) == hashed("fn", "Val\u00e9ry")
    assert normalize("fn", decomposed) == "val\u00e9ry"
    assert hashed("fn", "Valéry").startswith("08e1996b")  # Meta's vector (shortened in the doc)
    assert hashed("fn", "Valéry").endswith("7149c")


@pytest.mark.parametrize(
    ("field", "plain", "normalized"),
    [
        ("em", "  John_Smith@Gmail.COM ", "john_smith@gmail.com"),
        ("fn", "Mary-Ann!", "maryann"),
        ("ln", "O'Neil", "oneil"),
        ("ct", "New York", "newyork"),
        ("ct", "St. Louis", "stlouis"),
        ("st", "CA", "ca"),
        ("zp", "94035-1234", "94035"),
        ("zp", "M1 1AE", "m11ae"),
        ("country", " us ", "us"),
        ("ge", "Female", "f"),
        ("db", "19970216", "19970216"),
        ("external_id", " cust-42 ", "cust-42"),
    ],
)
def test_normalization(field: str, plain: str, normalized: str) -> None:
    assert normalize(field, plain) == normalized


@pytest.mark.parametrize(
    ("field", "plain"),
    [("em", "not-an-email"), ("country", "usa"), ("country", "zz"), ("ge", "x"), ("fn", "!!!")],
)
def test_unusable_values_are_left_out(field: str, plain: str) -> None:
    assert hashed(field, plain) is None


def test_a_value_already_hashed_is_kept() -> None:
    digest = META_EXAMPLES[0][2]
    assert hashed("em", digest.upper()) == digest


@pytest.mark.parametrize(
    ("raw", "region", "digits"),
    [
        ("+1 650-555-1234", "", "16505551234"),
        ("16505551234", "", "16505551234"),
        ("1 (650) 555 1234", "", "16505551234"),
        ("(650) 555-1234", "US", "16505551234"),
        ("16505551234", "US", "16505551234"),
        ("06 12 34 56 78", "FR", "33612345678"),
        ("0033 6 12 34 56 78", "", "33612345678"),
        ("+33 (0)6 12 34 56 78", "", "33612345678"),
        ("011 98765-4321", "BR", "5511987654321"),
        ("+55 11 98765 4321", "US", "5511987654321"),
        ("tel: +44 7911 123456", "", "447911123456"),
    ],
)
def test_phone_formats_shops_send(raw: str, region: str, digits: str) -> None:
    assert phone_digits(raw, region) == digits


def test_not_a_phone_number() -> None:
    assert phone_digits("n/a") is None
    assert phone_digits("12345") is None


def test_wa_id_forms_of_mexican_and_brazilian_numbers() -> None:
    assert "5215512345678" in wa_id_candidates("525512345678")
    assert "551187654321" in wa_id_candidates("5511987654321")


def test_hash_all_reads_zip_with_the_country() -> None:
    out = hash_all({"zp": "12345-6789", "country": "US", "fn": "", "ph": None})
    assert set(out) == {"zp", "country"}
    assert out["zp"] == hashed("zp", "12345")
