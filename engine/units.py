"""Named expression units of the open stand-in head.

The stand-in head (see :mod:`mm2face.engine.standin`) has 50 expression components in FLAME's
expression slots. Unlike FLAME's PCA basis, each one is a named, FACS-like action unit:
coefficient 0 is rest, 1 is the unit's full activation (values up to ~1.5 are still plausible).
With the real FLAME model the slots are PCA components and these names do not apply.

``UNITS[i]`` names expression slot ``i``; slots named ``unused_NN`` have a zero basis.
"""
from __future__ import annotations

# (name, FACS action unit or "" , short description). Order is the expression slot index.
_UNIT_TABLE: list[tuple[str, str, str]] = [
    ("inner_brow_raiser", "AU1", "inner ends of both brows go up"),
    ("outer_brow_raiser_left", "AU2", "outer end of the left brow goes up"),
    ("outer_brow_raiser_right", "AU2", "outer end of the right brow goes up"),
    ("brow_lowerer", "AU4", "brows pulled down and together"),
    ("upper_lid_raiser", "AU5", "upper eyelids lifted, eyes widen"),
    ("cheek_raiser", "AU6", "cheeks lifted, crow's feet"),
    ("lid_tightener", "AU7", "lower lids pushed up, eyes narrow"),
    ("nose_wrinkler", "AU9", "nose sides wrinkle upward"),
    ("upper_lip_raiser", "AU10", "upper lip lifts"),
    ("lip_corner_puller_left", "AU12", "left mouth corner pulled up and out (smile)"),
    ("lip_corner_puller_right", "AU12", "right mouth corner pulled up and out (smile)"),
    ("dimpler", "AU14", "mouth corners tightened inward"),
    ("lip_corner_depressor", "AU15", "mouth corners pulled down (frown)"),
    ("lower_lip_depressor", "AU16", "lower lip pulled down"),
    ("chin_raiser", "AU17", "chin boss pushes the lower lip up"),
    ("lip_pucker", "AU18", "lips pushed forward and narrowed"),
    ("lip_stretcher", "AU20", "lips stretched sideways"),
    ("lip_funneler", "AU22", "lips funnel outward (as in 'oo')"),
    ("lip_tightener", "AU23", "lips narrowed and tightened"),
    ("lip_pressor", "AU24", "lips pressed together (p, b, m)"),
    ("lips_part", "AU25", "lips part without the jaw moving"),
    ("blink_left", "AU45", "left upper lid closes"),
    ("blink_right", "AU45", "right upper lid closes"),
    ("cheek_puff", "AU34", "cheeks puffed out"),
    ("mouth_left", "", "whole mouth shifts to the subject's left"),
    ("mouth_right", "", "whole mouth shifts to the subject's right"),
    ("lip_suck", "AU28", "lips rolled inward"),
    ("nostril_dilator", "AU38", "nostrils widen"),
    ("mouth_close", "", "lips close against an open jaw (ARKit mouthClose; p, b, m between open vowels)"),
    ("lower_lip_roll", "AU28", "lower lip rolls in onto the upper teeth (ARKit mouthRollLower; f, v)"),
]
N_SLOTS = 50
UNITS: list[str] = [u[0] for u in _UNIT_TABLE] + [f"unused_{i:02d}" for i in range(len(_UNIT_TABLE), N_SLOTS)]
UNIT_INDEX: dict[str, int] = {name: i for i, name in enumerate(UNITS)}
USED_UNITS: list[str] = [u[0] for u in _UNIT_TABLE]


def unit(name: str) -> int:
    """Expression slot index of a named unit; raises KeyError listing the valid names."""
    try:
        return UNIT_INDEX[name]
    except KeyError:
        raise KeyError(f"unknown expression unit {name!r}; known units: {', '.join(USED_UNITS)}") from None


def unit_table_markdown() -> str:
    """The unit table as markdown (for docs/standin_head.md)."""
    rows = ["| slot | unit | FACS | what moves |", "|---:|---|---|---|"]
    rows += [f"| {i} | `{n}` | {au} | {d} |" for i, (n, au, d) in enumerate(_UNIT_TABLE)]
    rows.append(f"| {len(_UNIT_TABLE)}–{N_SLOTS - 1} | `unused_NN` | | zero basis (reserved) |")
    return "\n".join(rows)
