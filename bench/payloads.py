"""Signed click-to-WhatsApp deliveries, as Meta sends them: each the first message of a user who
tapped an ad (its ``referral`` carries the ``ctwa_clid``), all distinct (wamid, user, click).

The shape follows tests/payloads.py and Meta's documented payloads (2026: contacts carry the
business-scoped ``user_id`` beside ``wa_id``). Bodies are compact JSON of about 1.2 KB.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from waconv.webhooks.signature import sign

WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_PHONE_NUMBER = "15550783881"

FIRST_NAMES = ("Ana", "Bruno", "Carla", "Diego", "Elena", "Felipe", "Gabriela", "Hugo", "Iris")
LAST_NAMES = ("Silva", "Souza", "Oliveira", "Pereira", "Costa", "Rodrigues", "Almeida", "Lima")
# The prefilled first message of a CTWA ad, or what users type instead. About a third ask for a
# price, which the default rules (config/rules.toml, "asked-for-price") turn into a conversion.
TEXTS = (
    "Can I get more info about this?",
    "Hi! I saw your ad on Instagram",
    "Is this still available?",
    "How much is the small succulent set?",
    "What is the price with delivery?",
    "Hello, do you ship to Campinas?",
)
ADS = tuple(
    {
        "source_id": str(120226305854810726 + 7919 * i),
        "headline": headline,
        "body": body,
        "media_type": media,
    }
    for i, (headline, body, media) in enumerate(
        (
            ("Chat with us", "Summer Succulents are here! Fresh plants delivered in 24h.", "image"),
            ("Ask for a quote", "Handmade ceramic pots, 20% off this week only.", "video"),
            ("Talk to a specialist", "Free plant care consultation on WhatsApp.", "image"),
            ("Order on WhatsApp", "Build your own terrarium kit, shipped nationwide.", "image"),
        )
    )
)


def _token(seed: str, length: int) -> str:
    raw = b""
    counter = 0
    while len(raw) * 4 // 3 < length:
        raw += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")[:length]


def delivery(index: int, *, now: int, rng: random.Random) -> dict[str, object]:
    wa_id = f"55119{index:08d}"
    user_id = f"BR.{13491208655302741918 + index * 104729}"
    wamid_raw = f"\x15\x18\x0d{wa_id}\x15\x02\x00\x12\x18\x14".encode()
    wamid = (
        "wamid." + base64.b64encode(wamid_raw + hashlib.sha1(str(index).encode()).digest()).decode()
    )
    ad = ADS[index % len(ADS)]
    referral: dict[str, object] = {
        "source_url": f"https://fb.me/{_token(f'url{index % 97}', 9)}",
        "source_id": ad["source_id"],
        "source_type": "ad",
        "body": ad["body"],
        "headline": ad["headline"],
        "media_type": ad["media_type"],
        "ctwa_clid": "Aff" + _token(f"clid{index}", 137),
        "welcome_message": {"text": "Hi there! Let us know how we can help!"},
    }
    media_path = f"v/t45.1600-4/{_token(f'media{index % 41}', 24)}_n.jpg"
    if ad["media_type"] == "video":
        referral["video_url"] = f"https://video.xx.fbcdn.net/{media_path}?_nc_cat=1"
        referral["thumbnail_url"] = f"https://scontent.xx.fbcdn.net/{media_path}?stp=dst-jpg"
    else:
        referral["image_url"] = f"https://scontent.xx.fbcdn.net/{media_path}?_nc_cat=1&ccb=1-7"
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    message = {
        "from": wa_id,
        "from_user_id": user_id,
        "id": wamid,
        "timestamp": str(now - rng.randint(0, 3600)),
        "type": "text",
        "text": {"body": rng.choice(TEXTS)},
        "referral": referral,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": DISPLAY_PHONE_NUMBER,
                                "phone_number_id": PHONE_NUMBER_ID,
                            },
                            "contacts": [
                                {"profile": {"name": name}, "wa_id": wa_id, "user_id": user_id}
                            ],
                            "messages": [message],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


@dataclass(frozen=True)
class Signed:
    signature: str
    body: bytes


def signed_deliveries(
    count: int, *, app_secret: str, start: int = 0, seed: int = 7
) -> list[Signed]:
    rng = random.Random(seed + start)
    now = int(time.time())
    out = []
    for index in range(start, start + count):
        body = json.dumps(delivery(index, now=now, rng=rng), separators=(",", ":")).encode()
        out.append(Signed(sign(app_secret, body), body))
    return out


def write_slices(deliveries: list[Signed], directory: Path, threads: int) -> list[int]:
    """One file per wrk thread (slice_1.tsv …), contiguous slices; returns the slice sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes = []
    per = -(-len(deliveries) // threads)
    for n in range(threads):
        part = deliveries[n * per : (n + 1) * per]
        with (directory / f"slice_{n + 1}.tsv").open("wb") as fh:
            for d in part:
                assert b"\n" not in d.body and b"\t" not in d.body
                fh.write(d.signature.encode() + b"\t" + d.body + b"\n")
        sizes.append(len(part))
    return sizes
