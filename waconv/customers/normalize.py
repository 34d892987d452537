"""Customer information as Meta wants it: normalized, then SHA-256 (lowercase hex).

Pure functions, no database: what the connectors and the outbox use to turn the plain values
a shop sends into the only form waconv keeps. The rules are Meta's "Customer Information
Parameters" (meta-api.md section 4); where Meta's text and its Python SDK differ, Meta's text
wins (letters and symbols are removed from phone numbers, not refused; ``external_id`` is
hashed too, since waconv keeps no plain customer value).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping

# The customer information parameters waconv hashes (user_data keys of the Conversions API).
FIELDS = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")
MAX_PLAIN = 512  # longer "names" or "emails" are not customer information but noise
_HASHED = re.compile(r"[0-9a-f]{64}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_US_ZIP = re.compile(r"(\d{5})-?\d{4}")
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
# Meta: "must include country code"; fewer digits than this are not a phone number anywhere.
MIN_PHONE_DIGITS = 7
MAX_PHONE_DIGITS = 15  # E.164


def sha256_hex(normalized: str) -> str:
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def known_region(region: str) -> bool:
    """A two-letter region phone numbers can be read in (ISO 3166-1 alpha-2, any case)."""
    import phonenumbers  # here, not at the top: 50 ms that only phone numbers need

    return region.upper() in phonenumbers.SUPPORTED_REGIONS


def phone_digits(raw: str, default_region: str = "") -> str | None:
    """A phone number as digits with its country code (``16505551234``), or None.

    Shops write numbers every way: ``+1 650-555-1234``, ``(650) 555-1234``, ``0612345678``,
    ``16505551234``. A number with ``+`` or ``00`` carries its country code; one without is read
    in ``default_region`` first, then as digits that start with a country code (as WhatsApp's
    ``wa_id`` does). Failing both, Meta's own rule: the digits, leading zeros removed.
    """
    import phonenumbers

    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    digits = "".join(ch for ch in text if ch.isdigit())
    if not MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS + 4:
        return None
    readings: list[tuple[str, str | None]] = []
    if text.startswith("+"):
        readings.append((text, None))
    else:
        if default_region:
            readings.append((text, default_region.upper()))
        readings.append(("+" + digits, None))
    possible: str | None = None
    for candidate, region in readings:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
        if phonenumbers.is_valid_number(number):
            return e164
        if possible is None and phonenumbers.is_possible_number(number):
            possible = e164
    if possible is not None:
        return possible
    stripped = digits.lstrip("0")
    return stripped if MIN_PHONE_DIGITS <= len(stripped) <= MAX_PHONE_DIGITS else None


def wa_id_candidates(digits: str) -> list[str]:
    """The ``wa_id`` values a phone number may appear as in WhatsApp.

    WhatsApp keeps Mexico's old mobile prefix (``521`` + 10 digits for ``+52`` numbers) and may
    drop Brazil's ninth mobile digit (``55`` + area + 8 digits), so both forms are tried.
    """
    found = [digits]
    if digits.startswith("52") and len(digits) == 12:
        found.append("521" + digits[2:])
    elif digits.startswith("521") and len(digits) == 13:
        found.append("52" + digits[3:])
    elif digits.startswith("55") and len(digits) == 13 and digits[4] == "9":
        found.append(digits[:4] + digits[5:])
    elif digits.startswith("55") and len(digits) == 12:
        found.append(digits[:4] + "9" + digits[4:])
    return found


def _text(value: str) -> str:
    # NFC: Meta's own vector (Valéry) hashes the composed é.
    return unicodedata.normalize("NFC", value).strip().lower()


def _without_punctuation(value: str) -> str:
    kept = "".join(ch for ch in value if not unicodedata.category(ch).startswith(("P", "S")))
    return " ".join(kept.split())


def _letters(value: str) -> str:
    return "".join(ch for ch in value if ch.isalpha())


def _email(value: str) -> str | None:
    text = _text(value)
    return text if _EMAIL.fullmatch(text) else None


def _name(value: str) -> str | None:
    return _without_punctuation(_text(value)) or None


def _city(value: str) -> str | None:
    return _letters(_text(value)) or None


def _zip(value: str, country: str | None) -> str | None:
    text = _text(value)
    us = _US_ZIP.fullmatch(text)
    if us and country in (None, "us"):
        return us.group(1)
    squeezed = "".join(ch for ch in text if ch.isalnum())
    if country == "us":
        squeezed = squeezed[:5]
    return squeezed or None


def _country(value: str) -> str | None:
    text = _letters(_text(value))
    return text if len(text) == 2 and known_region(text) else None


def _gender(value: str) -> str | None:
    text = _letters(_text(value))
    return text[0] if text[:1] in ("f", "m") else None


def _birth_date(value: str) -> str | None:
    found = _DATE.fullmatch(_text(value))
    return "".join(found.groups()) if found else None


def _external_id(value: str) -> str | None:
    return value.strip() or None


_NORMALIZERS: Mapping[str, Callable[[str], str | None]] = {
    "em": _email,
    "fn": _name,
    "ln": _name,
    "ge": _gender,
    "db": _birth_date,
    "ct": _city,
    "st": _city,  # a state code or name: lowercase letters only (Meta: "ca")
    "country": _country,
    "external_id": _external_id,
}


def normalize(
    field: str, value: str, *, default_region: str = "", country: str | None = None
) -> str | None:
    """``value`` as Meta wants it before hashing, or None when nothing usable is left.

    ``country`` (normalized, e.g. ``us``) only changes how a ZIP code is read.
    """
    if field not in FIELDS:
        raise ValueError(f"{field!r} is not a customer information parameter")
    if len(value) > MAX_PLAIN:
        return None
    if field == "ph":
        return phone_digits(value, default_region)
    if field == "zp":
        return _zip(value, country)
    return _NORMALIZERS[field](value)


def hashed(
    field: str, value: object, *, default_region: str = "", country: str | None = None
) -> str | None:
    """SHA-256 of the normalized value; a value already hashed (64 hex) is kept as it is."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and field in ("ph", "external_id", "zp")
    ):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    if _HASHED.fullmatch(value.strip().lower()):
        return value.strip().lower()
    normalized = normalize(field, value, default_region=default_region, country=country)
    if not normalized:
        return None
    try:
        return sha256_hex(normalized)
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): not a name or email
        return None


def hash_all(values: Mapping[str, object], *, default_region: str = "") -> dict[str, str]:
    """Each known field of ``values`` hashed; fields with nothing usable are left out."""
    country = None
    if isinstance(values.get("country"), str):
        country = _country(str(values["country"]))
    out: dict[str, str] = {}
    for field in FIELDS:
        if field in values:
            digest = hashed(field, values[field], default_region=default_region, country=country)
            if digest is not None:
                out[field] = digest
    return out
