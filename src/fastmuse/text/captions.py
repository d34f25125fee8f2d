"""Caption rules: rewrites a model's captions get before the text encoder, in training and
at inference alike (the model config's `caption_rule` names one; the encoder applies it).

    ""                    captions as written
    canonical_relations   a caption of one spatial relation is put in its left/above form:
                          "A right of B" -> "B left of A", "A below B" -> "B above A" (also
                          "to the right of", "is below"). Same meaning, one direction per axis,
                          so the model only has to learn "the first-named object is left / on
                          top" instead of crossing the relation word with the word order, which
                          MiniLM barely marks (docs/masked-vs-ar.md part 11)

Captions the rule does not match (no relation, or more than one) pass unchanged.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

_FLIP = {"right of": "left of", "below": "above"}
_RELATION = re.compile(r"(?P<a>.+?)\s+(?P<lead>(?:is\s+)?(?:to the\s+)?)"
                       r"(?P<rel>left of|right of|above|below)\s+(?P<b>.+?)(?P<end>[.!]?)", re.IGNORECASE)
_ANY_RELATION = re.compile(r"\b(left|right|above|below)\b", re.IGNORECASE)


def canonical_relations(caption: str) -> str:
    """"A right of B" is read as "B left of A", "A below B" as "B above A"."""
    m = _RELATION.fullmatch(caption.strip())
    if m is None or _ANY_RELATION.search(m["a"]) or _ANY_RELATION.search(m["b"]):
        return caption
    rel = m["rel"].lower()
    if rel not in _FLIP:
        return caption
    return f"{m['b']} {m['lead']}{_FLIP[rel]} {m['a']}{m['end']}"


CAPTION_RULES = {"": lambda caption: caption, "canonical_relations": canonical_relations}


def check_caption_rule(rule: str) -> str:
    if rule not in CAPTION_RULES:
        accepted = ", ".join(repr(r) for r in CAPTION_RULES)
        raise ConfigError(f"'caption_rule' is {rule!r}; accepted: {accepted}")
    return rule
