"""One vocabulary for event indicators, shared by ``ingest`` and the survival analysis.

Accepted: 0/1 (also ``1.0``), booleans, words (``dead``/``alive``, ``yes``/``no``, ...), and
cBioPortal's coded labels, where the digit before the colon decides (``1:DECEASED``,
``0:LIVING``, ``1:Recurred/Progressed``, ``0:DiseaseFree``). ``ingest`` used to refuse the
coded labels that ``report`` accepted.
"""

from __future__ import annotations

import re

EVENT_TRUE = frozenset({"1", "1.0", "true", "t", "yes", "y", "dead", "deceased", "died",
                        "event", "progressed", "progression", "recurred", "relapsed"})
EVENT_FALSE = frozenset({"0", "0.0", "false", "f", "no", "n", "alive", "living", "censored",
                         "no event", "diseasefree", "disease free", "progression free"})
_CODED = re.compile(r"^\s*([01])\s*:")


def event_code(raw: object) -> int | None:
    """1 (event), 0 (censored) or None (missing); ``ValueError`` for anything else."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        return int(raw)
    text = str(raw).strip()
    if not text:
        return None
    coded = _CODED.match(text)
    if coded:
        return int(coded.group(1))
    key = text.lower()
    if key in EVENT_TRUE:
        return 1
    if key in EVENT_FALSE:
        return 0
    raise ValueError(f"unrecognised event value {raw!r}")
