"""LEVIR-CC-style captions for synthetic changes, from many templates.

Every caption is a faithful function of the rendered change (kind, location, count and what
was there before). Only words of the real LEVIR-CC vocabulary are used (tests check this with
`template_words`); there is no inner punctuation, and several changes are joined with "and",
as in LEVIR-CC. Unchanged pairs get the five fixed LEVIR-CC sentences instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rsicrc.levircc import NO_CHANGE_SENTENCES
from rsicrc.synth.spec import Change
from rsicrc.vocab import tokenize

MAX_TOKENS = 39  # the longest LEVIR-CC caption
N_CAPTIONS = 5

LOC: dict[str, tuple[str, ...]] = {
    "top": ("at the top", "at the top of the scene", "on the top side",
            "on the top side of the scene",
            "in the upper part of the scene", "at the top of the image"),
    "bottom": ("at the bottom", "at the bottom of the scene", "on the bottom side",
               "in the lower part of the scene", "at the bottom of the image"),
    "left": ("on the left", "on the left side", "on the left side of the scene",
             "on the left of the image", "at the left side of the scene"),
    "right": ("on the right", "on the right side", "on the right side of the scene",
              "on the right of the image", "at the right side of the scene"),
    "center": ("in the center", "in the middle", "in the center of the scene",
               "in the middle of the scene", "in the middle of the image"),
    "top_left": ("in the top left corner", "in the upper left corner", "in the upper left",
                 "at the top left corner of the scene", "in the top left corner of the image"),
    "top_right": ("in the top right corner", "in the upper right corner", "in the upper right",
                  "at the top right corner of the scene", "in the top right corner of the image"),
    "bottom_left": ("in the bottom left corner", "in the lower left corner", "in the lower left",
                    "at the bottom left corner of the scene",
                    "in the bottom left corner of the image"),
    "bottom_right": ("in the bottom right corner", "in the lower right corner",
                     "in the lower right", "at the bottom right corner of the scene",
                     "in the bottom right corner of the image"),
}
# where something is built, by what was there before
ON: dict[str, tuple[str, ...]] = {
    "bareland": ("on the bareland", "on the bare land", "in the open space", "on the wasteland",
                 "in the desert", "on the empty land"),
    "grass": ("on the grass", "on the meadow", "on the grassland", "in the field"),
    "trees": ("in the woods", "among the trees", "in the forest"),
}
THE: dict[str, tuple[str, ...]] = {
    "bareland": ("the bareland", "the bare land", "the open space", "the wasteland",
                 "the empty land"),
    "grass": ("the grass", "the meadow", "the grassland"),
}
THROUGH: dict[str, tuple[str, ...]] = {
    "bareland": ("on the bareland", "across the bareland", "in the desert", "on the bare land"),
    "grass": ("across the grass", "on the meadow", "through the grassland", "on the grassland"),
    "trees": ("through the trees", "through the woods", "in the woods", "across the forest",
              "through the forest"),
}
BUILT_ONE = ("is built", "is constructed", "has been built", "has been constructed", "appears",
             "has appeared", "shows up")
BUILT_MANY = ("are built", "are constructed", "have been built", "have been constructed", "appear",
              "have appeared", "show up")
RAISED_ONE = BUILT_ONE + ("is erected", "has been erected")  # buildings only
RAISED_MANY = BUILT_MANY + ("are erected", "have been erected")
GONE_ONE = ("is removed", "has been removed", "disappears", "has disappeared")
GONE_MANY = ("are removed", "have been removed", "disappear", "have disappeared")
DEMOLISHED_ONE = ("is demolished", "has been demolished", "is pulled down") + GONE_ONE
DEMOLISHED_MANY = ("are demolished", "have been demolished", "are pulled down") + GONE_MANY
CUT_ONE = ("is cut down", "has been cut down") + GONE_ONE
CUT_MANY = ("are cut down", "have been cut down") + GONE_MANY
# count word -> (determiner phrases, plural?)
HOUSE_COUNT: dict[str, tuple[tuple[str, ...], bool]] = {
    "a": (("a", "a new"), False),
    "two": (("two", "two new"), True),
    "three": (("three", "three new"), True),
    "several": (("several", "some", "several new"), True),
    "many": (("many", "many new", "lots of"), True),
    "a row of": (("a row of", "a line of", "a row of new"), False),
}
HOUSE_ONE = ("house", "building", "villa")
HOUSE_MANY = ("houses", "buildings", "villas", "detached houses")
TREES: dict[str, tuple[tuple[str, bool], ...]] = {
    "several": (("several trees", True), ("some trees", True), ("several plants", True)),
    "many": (("many trees", True), ("lots of trees", True), ("the woods", True),
             ("many plants", True), ("a large part of the woods", False)),
    "a row of": (("a row of trees", False), ("a line of trees", False)),
}
ROAD: dict[str, tuple[str, ...]] = {
    "straight": ("a road", "a straight road", "a new road", "a straight road",
                 "a new straight road"),
    "t_shaped": ("a road", "a t shaped road", "a road with a branch", "a new road",
                 "a t shaped road"),
    "curved": ("a road", "a curved road", "a winding road", "a curved road", "a new curved road"),
}
LOTS: dict[str, tuple[str, ...]] = {
    "a": ("a parking lot", "a new parking lot", "a parking lot with some cars",
          "a large parking lot"),
    "two": ("two parking lots", "two new parking lots", "two parking lots with some cars"),
}
POOLS: dict[str, tuple[str, ...]] = {
    "a": ("a swimming pool", "a pool", "a new swimming pool", "a small swimming pool"),
    "two": ("two swimming pools", "two pools", "two small pools"),
    "three": ("three swimming pools", "three pools", "three small pools"),
}
YARD_ONE = ("beside the house", "next to the house", "in the yard", "near the house",
            "behind the house", "beside the villa")
YARD_MANY = ("beside the houses", "next to the houses", "in the yards", "near the houses",
             "in the yards of the houses", "beside the villas")
PONDS: dict[str, tuple[str, ...]] = {
    "a": ("a pond", "a small lake", "a lake", "a new pond", "a small pond"),
    "two": ("two ponds", "two small ponds", "two new ponds"),
}
POND_ONE = ("appears", "has appeared", "is formed", "has formed", "shows up", "is built")
POND_MANY = ("appear", "have appeared", "are formed", "have formed", "show up", "are built")
LAKE = ("the lake", "the pond", "the small lake")
DRIED = ("becomes dry", "has become dry", "disappears", "has disappeared", "has been filled",
         "turns into bareland", "has turned into bareland", "is filled and becomes bareland")
JOIN = ("and",)


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _loc(rng: np.random.Generator, c: Change) -> str:
    return _pick(rng, LOC[c.location])


def _houses_np(rng: np.random.Generator, c: Change) -> tuple[str, bool]:
    dets, plural = HOUSE_COUNT[c.count]
    noun = _pick(rng, HOUSE_ONE if c.count == "a" else HOUSE_MANY)
    return f"{_pick(rng, dets)} {noun}", plural


def _houses_built(rng: np.random.Generator, c: Change) -> str:
    np_, plural = _houses_np(rng, c)
    vp = _pick(rng, RAISED_MANY if plural else RAISED_ONE)
    loc, ctx = _loc(rng, c), _pick(rng, ON[c.context])
    pat = int(rng.choice(4, p=[0.4, 0.35, 0.15, 0.1]))
    if pat == 0:
        return f"{np_} {vp} {loc}"
    if pat == 1:
        return f"{np_} {vp} {ctx} {loc}"
    if pat == 2:
        return f"{_pick(rng, THE[c.context])} {loc} is replaced by {np_}"
    return f"{np_} {vp} {ctx}"


def _houses_demolished(rng: np.random.Generator, c: Change) -> str:
    np_, plural = _houses_np(rng, c)
    np_ = np_.replace(" new", "")
    if rng.random() < 0.4 and c.count in ("a", "two", "three"):
        np_ = "the " + np_.removeprefix("a ")
    vp = _pick(rng, DEMOLISHED_MANY if plural else DEMOLISHED_ONE)
    be = "are" if plural else "is"
    loc = _loc(rng, c)
    pat = int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))
    if pat == 0:
        return f"{np_} {loc} {vp}"
    if pat == 1:
        return f"{np_} {vp} {loc}"
    if pat == 2:
        if c.detail == "foundation" and not plural:
            return f"{np_} {loc} {be} reduced to a foundation"
        return f"{np_} {loc} {be} replaced by bareland"
    return f"{np_} {loc} {vp} and the ground becomes bare"


def _road_built(rng: np.random.Generator, c: Change) -> str:
    np_ = _pick(rng, ROAD[c.detail])
    vp = _pick(rng, BUILT_ONE)
    loc, ctx = _loc(rng, c), _pick(rng, THROUGH[c.context])
    pat = int(rng.choice(4, p=[0.4, 0.3, 0.15, 0.15]))
    if pat == 0:
        return f"{np_} {vp} {ctx} {loc}"
    if pat == 1:
        return f"{np_} {vp} {loc}"
    if pat == 2 and c.context == "trees":
        return f"{np_} {vp} {loc} replacing some trees"
    if pat == 2:
        return f"{np_} {loc} {vp} {ctx}"
    return f"{np_} {vp} {ctx}"


def _trees_removed(rng: np.random.Generator, c: Change) -> str:
    np_, plural = _pick(rng, TREES[c.count])
    vp = _pick(rng, CUT_MANY if plural else CUT_ONE)
    be = "are" if plural else "is"
    loc = _loc(rng, c)
    pat = int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))
    if pat == 0:
        return f"{np_} {loc} {vp}"
    if pat == 1:
        return f"{np_} {vp} {loc}"
    if pat == 2:
        return f"{np_} {loc} {be} replaced by {'bareland' if c.detail == 'bareland' else 'grass'}"
    return f"{np_} {vp}"


def _appeared(rng: np.random.Generator, c: Change, nouns: dict[str, tuple[str, ...]],
              verbs: tuple[str, ...], becomes: str) -> str:
    """Shared clause shapes of things that appear on some ground (parking lots, ponds)."""
    np_ = _pick(rng, nouns[c.count])
    vp = _pick(rng, verbs)
    loc, ctx = _loc(rng, c), _pick(rng, ON[c.context])
    pat = int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))
    if pat == 0:
        return f"{np_} {vp} {loc}"
    if pat == 1:
        return f"{np_} {vp} {ctx} {loc}"
    if pat == 2:
        return f"{_pick(rng, THE[c.context])} {loc} {becomes} {np_}"
    return f"{np_} {vp} {ctx}"


def _parking_built(rng: np.random.Generator, c: Change) -> str:
    return _appeared(rng, c, LOTS, BUILT_MANY if c.count == "two" else BUILT_ONE, "is turned into")


def _pool_built(rng: np.random.Generator, c: Change) -> str:
    np_ = _pick(rng, POOLS[c.count])
    vp = _pick(rng, (BUILT_ONE + ("is added",)) if c.count == "a" else
               (BUILT_MANY + ("are added",)))
    loc, yard = _loc(rng, c), _pick(rng, YARD_ONE if c.count == "a" else YARD_MANY)
    pat = int(rng.choice(3, p=[0.45, 0.35, 0.2]))
    if pat == 0:
        return f"{np_} {vp} {yard} {loc}"
    if pat == 1:
        return f"{np_} {vp} {loc}"
    return f"{np_} {vp} {yard}"


def _pond_appeared(rng: np.random.Generator, c: Change) -> str:
    return _appeared(rng, c, PONDS, POND_ONE if c.count == "a" else POND_MANY, "turns into")


def _lake_dried(rng: np.random.Generator, c: Change) -> str:
    lake, loc = _pick(rng, LAKE), _loc(rng, c)
    if rng.random() < 0.15:
        return f"the water of {lake} {loc} has vanished"
    return f"{lake} {loc} {_pick(rng, DRIED)}"


_CLAUSES = {
    "houses_built": _houses_built,
    "houses_demolished": _houses_demolished,
    "road_built": _road_built,
    "trees_removed": _trees_removed,
    "parking_built": _parking_built,
    "pool_built": _pool_built,
    "pond_appeared": _pond_appeared,
    "lake_dried": _lake_dried,
}


def clause(change: Change, rng: np.random.Generator) -> list[str]:
    """Tokens of one clause describing one change."""
    return tokenize(_CLAUSES[change.kind](rng, change))


def describe(changes: Sequence[Change], rng: np.random.Generator,
             n: int = N_CAPTIONS) -> list[list[str]]:
    """`n` distinct token lists for a pair; the no-change sentences if `changes` is empty."""
    if not changes:
        return [tokenize(s) for s in NO_CHANGE_SENTENCES][:n]
    out: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for attempt in range(200):
        order = list(range(len(changes)))
        if len(order) > 1 and rng.random() < 0.4:
            order = [int(i) for i in rng.permutation(len(order))]
        tokens: list[str] = []
        for k, i in enumerate(order):
            if k:
                tokens.append(_pick(rng, JOIN))
            tokens += clause(changes[i], rng)
        if len(tokens) > MAX_TOKENS and attempt < 150:
            continue
        tokens = tokens[:MAX_TOKENS]
        if tuple(tokens) not in seen:
            seen.add(tuple(tokens))
            out.append(tokens)
            if len(out) == n:
                return out
    raise RuntimeError("could not write distinct captions")  # not reachable with these tables


def raw_text(tokens: Sequence[str]) -> str:
    """The LEVIR-CC `raw` form: ' w1 w2 ... .'"""
    return " " + " ".join(tokens) + " ."


def _strings(obj: object) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, tuple | list):
        for v in obj:
            yield from _strings(v)


# fixed words the clause functions add around the table phrases
_GLUE = ("is replaced by", "are replaced by", "the", "reduced to a foundation", "bareland",
         "and the ground becomes bare", "replacing some trees", "grass", "is turned into",
         "turns into", "the water of has vanished")


def template_words() -> set[str]:
    """Every word a caption can contain (for checks against a vocabulary)."""
    tables = (LOC, ON, THE, THROUGH, RAISED_ONE, RAISED_MANY, DEMOLISHED_ONE, DEMOLISHED_MANY,
              CUT_ONE, CUT_MANY, HOUSE_COUNT, HOUSE_ONE, HOUSE_MANY, TREES, ROAD, LOTS, POOLS,
              YARD_ONE, YARD_MANY, PONDS, POND_ONE, POND_MANY, LAKE, DRIED, JOIN, _GLUE,
              ("is added", "are added"), NO_CHANGE_SENTENCES)
    return {w for s in _strings(tables) for w in tokenize(s)}
