"""Motion -> hierarchical text, in the spirit of MMHead's annotation pipeline.

1. :func:`frame_descriptions`: every 3rd frame of a 25 fps sequence becomes one line
   ``<frame 12, Lip corner puller left: 0.79, Cheek raiser: 0.41, Head up: 0.25>`` listing the
   activated units (stand-in head: the named expression slots read as action-unit intensities,
   clipped to 0..1) followed by head-pose terms from the paper's Table 1 with |angle| in radians:
   rx<0 "Head up", rx>0 "Head down", ry<0 "Head turns right", ry>0 "Head turns left",
   rz<0 "Head tilts left", rz>0 "Head tilts right".
2. :func:`build_prompts`: five prompts (action, emotion, emotion_scenario, detail_expression,
   detail_head_pose) built around those lists and the label sets, for a chat language model.
3. :class:`TemplateCaptioner`: an offline rule-based captioner producing the same five caption kinds
   (used by the synthetic factory and as the default of ``mm2face-data annotate``).
4. :func:`call_llm`: optional OpenAI-compatible chat endpoint (urllib only; called only when a URL is given).
"""
from __future__ import annotations

import json
import urllib.request

import numpy as np

from mm2face.engine.frame import FPS
from mm2face.engine.units import USED_UNITS, unit
from .metrics import OSCILLATION_RULES

CAPTION_KINDS = ["action", "emotion", "emotion_scenario", "detail_expression", "detail_head_pose"]
UNIT_THRESHOLD = 0.3          # a unit counts as activated above this intensity (0..1)
HEAD_THRESHOLD_RAD = 0.05     # a head-pose term is listed when |angle| exceeds this (rad)
FRAME_STEP = 3                # annotate every 3rd frame (as MMHead does at 25 fps)
# units whose activity is speech articulation, not expression: left out of the expression lists
SPEECH_UNITS = {"lips_part", "lip_pressor", "lip_pucker", "lip_funneler", "lower_lip_depressor", "lip_suck"}

HEAD_TERMS = (("Head up", "Head down"), ("Head turns right", "Head turns left"), ("Head tilts left", "Head tilts right"))


def unit_label(name: str) -> str:
    """'lip_corner_puller_left' -> 'Lip corner puller left'."""
    s = name.replace("_", " ")
    return s[0].upper() + s[1:]


def head_terms(head_rad, threshold: float = HEAD_THRESHOLD_RAD) -> list[tuple[str, float]]:
    """Table 1 terms for one head rotation (rx, ry, rz) rad: [(term, |angle|)] for |angle| > threshold."""
    out = []
    for axis, (neg, pos) in enumerate(HEAD_TERMS):
        a = float(head_rad[axis])
        if abs(a) > threshold:
            out.append((pos if a > 0 else neg, abs(a)))
    return out


def unit_intensities(motion: np.ndarray) -> np.ndarray:
    """(T, len(USED_UNITS)) stand-in unit activations clipped to 0..1 (columns follow USED_UNITS)."""
    return np.clip(np.asarray(motion)[:, [unit(u) for u in USED_UNITS]], 0.0, 1.0)


def frame_descriptions(motion, *, step: int = FRAME_STEP, units: bool = True, head: bool = True,
                       unit_threshold: float = UNIT_THRESHOLD, head_threshold: float = HEAD_THRESHOLD_RAD,
                       skip_speech_units: bool = False) -> list[str]:
    """One ``<frame N, Unit: 0.79, ..., Head up: 0.25>`` line per ``step``-th frame of ``motion (T, 56)``."""
    m = np.asarray(motion, dtype=np.float32)
    au = unit_intensities(m)
    lines = []
    for t in range(0, len(m), step):
        items = []
        if units:
            for j, name in enumerate(USED_UNITS):
                if au[t, j] > unit_threshold and not (skip_speech_units and name in SPEECH_UNITS):
                    items.append(f"{unit_label(name)}: {au[t, j]:.2f}")
        if head:
            items += [f"{term}: {a:.2f}" for term, a in head_terms(m[t, 50:53], head_threshold)]
        lines.append("<" + ", ".join([f"frame {t}"] + items) + ">")
    return lines


# ----------------------------------------------------------------------------------------- prompts
_P_ACTION = """You will receive a set of action labels describing what a person does in a short video, \
for example {{frown, nod, talk}}, and a list of per-frame observations sampled every third frame of the \
25 fps video, written as <frame N, Unit: intensity, ..., Head pose term: angle>. Unit intensities are \
between 0 and 1; head pose angles are in radians between 0 and 1.57. Use the observations only to work \
out the order in which the actions happen. Write one sentence of at most 30 words, in the present simple \
tense, that joins the action labels in chronological order. Do not write numbers, do not name action \
units or head pose terms, and add nothing that is not supported.

Action labels: {labels}

Per-frame observations:
{frames}"""

_P_EMOTION = """You will receive an ordered set of emotion labels for a person in a short video, for \
example {{happy, sad}}. A single label means the emotion stays the same for the whole clip; several labels \
mean it changes in the given order. Describe this in one grammatical sentence of at most 15 words, in the \
present simple tense, without extra remarks.

Emotion labels: {labels}"""

_P_SCENARIO = """Here is a sentence describing how a person's emotion looks or changes in a video: \
<{emotion_text}>. Imagine 3 different situations that could make the person feel this way. Write them as \
a numbered list, in the third person singular, each at most 15 words, with nothing else.
"""

_P_DETAIL_EXP = """You will receive a list of facial observations sampled every third frame of a 25 fps \
video, written as <frame N, Unit: intensity, ...>, where each unit is an activated facial action unit \
and its intensity lies between 0 and 1. Summarise how the face moves over time, in chronological \
order, as fluent natural language of at most 100 words in the present simple tense. Do not give frame \
numbers or intensity values, and leave out anything redundant.

Facial observations:
{frames}"""

_P_DETAIL_HEAD = """You will receive a list of head pose observations sampled every third frame of a \
25 fps video, written as <frame N, Head pose term: angle, ...>, where the angle is the rotation in \
radians (0 to 1.57) for each of the terms Head up/down, Head turns left/right and Head tilts left/right. \
Summarise how the head moves over time, in chronological order, as fluent natural language of at most \
100 words in the present simple tense. Do not give frame numbers or angle values, and leave out anything \
redundant.

Head pose observations:
{frames}"""


def build_prompts(motion, action_labels: list[str], emotion_labels: list[str],
                  emotion_text: str | None = None) -> dict[str, str]:
    """The five prompts for one clip. ``emotion_text`` (an emotion caption) feeds the scenario prompt;
    if omitted, a template emotion caption is used."""
    both = "\n".join(frame_descriptions(motion))
    exp = "\n".join(frame_descriptions(motion, head=False))
    hp = "\n".join(frame_descriptions(motion, units=False))
    if emotion_text is None:
        emotion_text = emotion_caption(emotion_labels, np.random.default_rng(0))
    return {
        "action": _P_ACTION.format(labels="{" + ", ".join(action_labels) + "}", frames=both),
        "emotion": _P_EMOTION.format(labels="{" + ", ".join(emotion_labels) + "}"),
        "emotion_scenario": _P_SCENARIO.format(emotion_text=emotion_text),
        "detail_expression": _P_DETAIL_EXP.format(frames=exp),
        "detail_head_pose": _P_DETAIL_HEAD.format(frames=hp),
    }


def call_llm(url: str, model: str, prompt: str, *, api_key: str | None = None, timeout_s: float = 60.0,
             temperature: float = 0.7) -> str:
    """Send one user message to an OpenAI-compatible chat endpoint; return the reply text.

    ``url`` may be the server root (``http://host:8000``), ``.../v1`` or the full ``.../chat/completions``.
    """
    u = url.rstrip("/")
    if not u.endswith("/chat/completions"):
        u = u + ("/chat/completions" if u.endswith("/v1") else "/v1/chat/completions")
    body = json.dumps({"model": model, "temperature": temperature,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(u, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            reply = json.loads(r.read().decode())
    except Exception as e:  # noqa: BLE001 - report any transport error with the URL
        raise RuntimeError(f"LLM request to {u} failed: {e}. Check --llm-url / --llm-model, "
                           f"or leave --llm-url out to use the offline template captioner.") from e
    try:
        return reply["choices"][0]["message"]["content"].strip()
    except (KeyError, IndexError, TypeError):
        raise RuntimeError(f"LLM reply from {u} has no choices[0].message.content: {str(reply)[:200]}") from None


# ------------------------------------------------------------------------------ template captioner
SUBJECTS = ["The person", "The speaker", "Someone", "A person", "The subject"]
EMO_ADJ = {"neutral": ["calm", "neutral", "composed", "relaxed"],
           "happy": ["happy", "cheerful", "pleased", "joyful"],
           "sad": ["sad", "unhappy", "downcast", "sorrowful"],
           "angry": ["angry", "annoyed", "furious", "irritated"],
           "surprised": ["surprised", "astonished", "amazed", "startled"],
           "disgusted": ["disgusted", "repulsed", "grossed out", "revolted"],
           "fearful": ["fearful", "scared", "frightened", "anxious"]}
SCENARIOS = {
    "neutral": ["listens to a routine weather report on the radio.", "explains a bus timetable to a colleague.",
                "reads out a shopping list.", "describes an ordinary day at the office.",
                "gives directions to a passer-by.", "goes through the agenda of a meeting."],
    "happy": ["hears that a close friend is coming to visit.", "finds out the exam went well.",
              "gets a surprise gift from a neighbour.", "tells a funny story at dinner.",
              "learns the job application was accepted.", "sees an old photo from a great holiday."],
    "sad": ["hears that a beloved pet has died.", "says goodbye to a friend who moves away.",
            "learns the trip has been cancelled.", "remembers a grandparent who passed away.",
            "reads a letter with bad news.", "fails a test after studying hard."],
    "angry": ["finds the car scratched in the parking lot.", "is blamed for a colleague's mistake.",
              "waits an hour for a delivery that never arrives.", "hears someone lie about them.",
              "gets cut off in traffic.", "discovers the bike has been stolen."],
    "surprised": ["opens the door to a surprise party.", "wins a raffle without expecting it.",
                  "meets a childhood friend in a foreign city.", "hears unexpected news on the phone.",
                  "sees a magician make a coin vanish.", "finds money in an old coat pocket."],
    "disgusted": ["smells milk that has gone sour.", "finds a hair in the soup.",
                  "steps in something sticky on the street.", "sees mould on a sandwich.",
                  "tastes a drink that went bad.", "watches someone chew loudly with an open mouth."],
    "fearful": ["hears footsteps behind them on a dark street.", "feels the plane shake in turbulence.",
                "sees a large spider on the pillow.", "waits for the results of a medical test.",
                "gets lost in a forest at night.", "hears a strange noise downstairs."],
}
_ACTION_VERBS = {  # label -> (present simple 3rd person phrase)
    "talk": "talks", "smile": "smiles", "frown": "frowns", "laugh": "laughs", "yawn": "yawns", "chew": "chews",
    "pout": "pouts", "raise eyebrows": "raises the eyebrows", "nod": "nods", "shake head": "shakes the head",
    "look around": "looks around", "wink": "winks", "squint": "squints", "sneer": "sneers",
    "look surprised": "looks surprised", "grimace": "grimaces", "puff cheeks": "puffs the cheeks",
    "press lips": "presses the lips together", "glare": "glares", "open mouth": "opens the mouth",
    "bite lip": "bites the lip", "tilt head": "tilts the head", "look down": "looks down", "look up": "looks up",
    "turn left": "turns the head to the left", "turn right": "turns the head to the right",
    "tilt left": "tilts the head to the left", "tilt right": "tilts the head to the right", "blink": "blinks",
    "look sad": "looks sad", "look angry": "looks angry", "look disgusted": "looks disgusted",
    "look scared": "looks scared", "look happy": "looks happy", "stay still": "keeps the head still",
}
# region phrases for the detailed expression caption: unit -> (rising phrase)
_UNIT_PHRASE = {
    "inner_brow_raiser": "the inner brows lift", "outer_brow_raiser_left": "the left outer brow rises",
    "outer_brow_raiser_right": "the right outer brow rises", "brow_lowerer": "the brows draw down and together",
    "upper_lid_raiser": "the eyes widen", "cheek_raiser": "the cheeks lift",
    "lid_tightener": "the lower lids tighten", "nose_wrinkler": "the nose wrinkles",
    "upper_lip_raiser": "the upper lip lifts", "lip_corner_puller_left": "the left mouth corner pulls up",
    "lip_corner_puller_right": "the right mouth corner pulls up", "dimpler": "the mouth corners dimple",
    "lip_corner_depressor": "the mouth corners turn down", "lower_lip_depressor": "the lower lip drops",
    "chin_raiser": "the chin pushes up", "lip_pucker": "the lips pucker", "lip_stretcher": "the lips stretch sideways",
    "lip_funneler": "the lips funnel", "lip_tightener": "the lips tighten", "lip_pressor": "the lips press together",
    "lips_part": "the lips part", "blink_left": "the left eye closes", "blink_right": "the right eye closes",
    "cheek_puff": "the cheeks puff out", "mouth_left": "the mouth shifts sideways",
    "mouth_right": "the mouth shifts sideways", "lip_suck": "the lips roll inward",
    "nostril_dilator": "the nostrils flare",
}


def _join(parts: list[str]) -> str:
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pick(rng, xs):
    return xs[int(rng.integers(len(xs)))]


def _dedupe(labels: list[str]) -> list[str]:
    out = []
    for lab in labels:
        if not out or out[-1] != lab:
            out.append(lab)
    return out


def action_caption(labels: list[str], rng: np.random.Generator) -> str:
    """Chronological sentence from ordered action labels (e.g. ['talk', 'smile', 'nod'])."""
    labels = _dedupe(labels) or ["stay still"]
    subj = _pick(rng, SUBJECTS)
    verbs = [_ACTION_VERBS.get(lab, lab + "s") for lab in labels]
    if labels[0] == "talk" and len(labels) > 1 and rng.random() < 0.5:
        first = f"{subj} talks and {verbs[1]}"
        rest = verbs[2:]
    else:
        first, rest = f"{subj} {verbs[0]}", verbs[1:]
    if not rest:
        return first + "."
    link = _pick(rng, [", then ", ", after that ", ", and then ", ", later "])
    return first + link + _join(rest) + "."


def emotion_caption(labels: list[str], rng: np.random.Generator) -> str:
    """One sentence (<= 15 words) for an ordered emotion label sequence."""
    labels = _dedupe(labels) or ["neutral"]
    subj = _pick(rng, SUBJECTS)
    adj = [_pick(rng, EMO_ADJ.get(e, [e])) for e in labels]
    if len(labels) == 1:
        return _pick(rng, [f"{subj} looks {adj[0]} throughout.", f"{subj} stays {adj[0]} the whole time.",
                           f"{subj} appears {adj[0]} from start to finish.",
                           f"{subj} remains {adj[0]} throughout the clip."])
    if len(labels) == 2:
        return _pick(rng, [f"{subj} goes from {adj[0]} to {adj[1]}.",
                           f"{subj} first looks {adj[0]}, then becomes {adj[1]}.",
                           f"{subj}'s mood shifts from {adj[0]} to {adj[1]}."])
    return f"{subj} looks {adj[0]}, then {_join(adj[1:-1])}, and finally {adj[-1]}."


def scenario_caption(labels: list[str], rng: np.random.Generator) -> str:
    """Three numbered scenarios (each <= 15 words) that could cause the emotion sequence."""
    labels = _dedupe(labels) or ["neutral"]
    lines = []
    first = rng.permutation(SCENARIOS.get(labels[0], SCENARIOS["neutral"]))[:3]
    last = rng.permutation(SCENARIOS.get(labels[-1], SCENARIOS["neutral"]))[:3]
    for i in range(3):
        subj = _pick(rng, ["The person", "He", "She", "The speaker"])
        if len(labels) == 1:
            s = f"{subj} {first[i]}"
        else:
            a, b = str(first[i]).rstrip("."), str(last[i])
            s = f"{subj} {a}, then {b}"
            if len(s.split()) > 15:
                s = f"{subj} {b}"
        lines.append(f"{i + 1}. {s}")
    return "\n".join(lines)


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end_exclusive)] of True runs in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], active.astype(int), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def expression_events(motion, step: int = FRAME_STEP, threshold: float = UNIT_THRESHOLD,
                      min_frames: int = 4) -> list[dict]:
    """Activated-unit intervals from the sampled frames: [{"unit", "t0", "t1", "peak"}], time-ordered (frames)."""
    au = unit_intensities(np.asarray(motion))[::step]
    ev = []
    for j, name in enumerate(USED_UNITS):
        if name in SPEECH_UNITS:
            continue
        for a, b in _runs(au[:, j] > threshold):
            if (b - a) * step >= min_frames or name.startswith("blink"):
                ev.append({"unit": name, "t0": int(a * step), "t1": int(b * step), "peak": float(au[a:b, j].max())})
    return sorted(ev, key=lambda e: (e["t0"], -e["peak"]))


def detail_expression_caption(motion, rng: np.random.Generator) -> str:
    """Chronological description of the activated units (no numbers), plus speech articulation if present."""
    m = np.asarray(motion)
    T = len(m)
    ev = expression_events(m)
    blinks = [e for e in ev if e["unit"] in ("blink_left", "blink_right")]
    n_blinks = len(_runs(np.isin(np.arange(T), [t for e in blinks for t in range(e["t0"], e["t1"])])))
    winks = [e for e in blinks if not any(o["unit"] != e["unit"] and o["t0"] < e["t1"] and e["t0"] < o["t1"]
                                          for o in blinks)]
    ev = [e for e in ev if not e["unit"].startswith("blink")]
    # group events that start close together
    groups: list[list[dict]] = []
    for e in ev:
        if groups and e["t0"] - groups[-1][0]["t0"] <= 6:
            groups[-1].append(e)
        else:
            groups.append([e])
    sentences = []
    jaw = m[:, 53]
    if jaw.std() > 0.02 and (np.abs(np.diff(jaw)) > 0.01).mean() > 0.2:
        sentences.append(_pick(rng, ["The jaw opens and closes rhythmically as the mouth forms words",
                                     "The mouth moves continuously, opening and closing with speech",
                                     "The lips and jaw keep moving as if speaking"]))
    elif jaw.max() > 0.2:
        sentences.append("The mouth opens wide" if jaw.max() > 0.3 else "The mouth opens")
    for i, g in enumerate(groups[:6]):
        seen, parts = set(), []
        for e in sorted(g, key=lambda e: -e["peak"]):
            p = _UNIT_PHRASE.get(e["unit"], unit_label(e["unit"]).lower())
            if p in seen:
                continue
            seen.add(p)
            strong = "strongly" if e["peak"] > 0.75 else ("slightly" if e["peak"] < 0.45 else "")
            parts.append(p + (f" {strong}" if strong else ""))
        held = all(e["t1"] >= T - 3 for e in g)
        when = ("At the start" if g[0]["t0"] <= 3 else
                _pick(rng, ["Then", "Next", "After that", "Later"]) if sentences else "After a moment")
        plural = len(parts) > 1
        if held:
            tail = " and stay that way" if plural else " and stays that way"
        elif max(e["t1"] - e["t0"] for e in g) > 20:
            tail = ""
        else:
            tail = ", then relax" if plural else ", then relaxes"
        sentences.append(f"{when}, {_join(parts[:4])}{tail}")
    if winks and len(winks) == len(blinks):
        side = "left" if winks[0]["unit"].endswith("left") else "right"
        sentences.append(f"The {side} eye winks")
    elif n_blinks:
        sentences.append(_pick(rng, ["The eyes blink " + ("once" if n_blinks == 1 else "twice" if n_blinks == 2
                                                           else "several times"),
                                     "The person blinks " + ("once" if n_blinks == 1 else "a few times")]))
    if len(sentences) == 0:
        return "The face stays relaxed and nearly still throughout."
    return ". ".join(_cap(s) for s in sentences) + "."


def _is_oscillation(motion, kind: str, t0: int, t1: int) -> bool:
    """Does ``motion``'s head between frames ``t0`` and ``t1`` (with a little margin) show a ``kind`` ("nod" or
    "shake") by the evaluator's own rule (:data:`mm2face.training.metrics.OSCILLATION_RULES`)?"""
    rule = next(r for r in OSCILLATION_RULES if r.name == kind)
    pad = FPS // 2
    seg = np.asarray(motion)[max(0, t0 - pad):t1 + pad]
    return rule.score(seg) > rule.margin_rad


def head_events_from_motion(motion, threshold: float = HEAD_THRESHOLD_RAD, confirm: bool = True) -> list[dict]:
    """Head behaviours read off the sampled head pose: [{"kind", "term", "t0", "t1", "peak", "returns"}] (frames).

    kind: "nod" (repeated short Head-down runs), "shake" (alternating short turn runs) or "hold" (one term).
    ``confirm``: a nod or shake is only called one where the evaluator's nod / shake rule sees it (a turn that
    comes back rings in the high-passed yaw like a shake, and a slow dip is no nod); the runs of one that
    is not are read as holds. False: the reading of corpora made before 6 Dec 2026 (session 10).
    """
    full = np.asarray(motion)
    m = full[::FRAME_STEP, 50:53]
    T = len(m) * FRAME_STEP
    # shakes riding on a held turn: look for alternating runs in the high-passed yaw (minus ~1 s average)
    k = 9
    ry = np.pad(m[:, 1], k // 2, mode="edge")
    hp = m[:, 1] - np.convolve(ry, np.ones(k) / k, mode="valid")[:len(m)]
    hruns = sorted((a, b, sg) for sg in (1, -1) for a, b in _runs(sg * hp > 0.8 * threshold))
    shakes, grp = [], []
    for r in hruns + [(10 ** 9, 10 ** 9, 0)]:
        if grp and r[0] - grp[-1][1] > 5:
            if len(grp) >= 3 and len({g[2] for g in grp}) == 2 and (
                    not confirm or _is_oscillation(full, "shake", grp[0][0] * FRAME_STEP, grp[-1][1] * FRAME_STEP)):
                a, b = grp[0][0], grp[-1][1]
                shakes.append({"kind": "shake", "term": "shake", "t0": int(a * FRAME_STEP), "t1": int(b * FRAME_STEP),
                               "peak": float(np.abs(hp[a:b]).max()), "count": len(grp), "returns": True})
            grp = []
        grp.append(r)

    def in_shake(r):
        return any(r["t0"] < e["t1"] and e["t0"] < r["t1"] for e in shakes)

    runs = []
    for axis, (neg, pos) in enumerate(HEAD_TERMS):
        for sign, term in ((-1, neg), (1, pos)):
            for a, b in _runs(sign * m[:, axis] > threshold):
                runs.append({"axis": axis, "term": term, "t0": int(a * FRAME_STEP), "t1": int(b * FRAME_STEP),
                             "peak": float(np.abs(m[a:b, axis]).max())})
    runs.sort(key=lambda r: r["t0"])
    out, used = list(shakes), set()
    for i, r in enumerate(runs):
        if i in used:
            continue
        short = r["t1"] - r["t0"] <= 25
        if r["axis"] == 1 and short and in_shake(r):
            used.add(i)
            continue
        # repeated short runs on the same axis -> nod / shake
        grp = [i]
        for j in range(i + 1, len(runs)):
            q = runs[j]
            if q["axis"] != r["axis"] or j in used or q["t1"] - q["t0"] > 25 or q["t0"] - runs[grp[-1]]["t1"] > 15:
                continue
            grp.append(j)
        nod = [j for j in grp if runs[j]["term"] == "Head down"]
        if r["axis"] == 0 and r["term"] == "Head down" and short and (len(grp) >= 2 or r["t1"] < T - 3) and (
                not confirm or _is_oscillation(full, "nod", r["t0"], runs[nod[-1]]["t1"])):
            grp = nod
            used.update(grp)
            out.append({"kind": "nod", "term": "Head down", "t0": r["t0"], "t1": runs[grp[-1]]["t1"],
                        "peak": max(runs[j]["peak"] for j in grp), "count": len(grp), "returns": True})
            continue
        if r["axis"] == 1 and short and len(grp) >= 2 and len({runs[j]["term"] for j in grp}) == 2 and (
                not confirm or _is_oscillation(full, "shake", r["t0"], runs[grp[-1]]["t1"])):
            used.update(grp)
            out.append({"kind": "shake", "term": "shake", "t0": r["t0"], "t1": runs[grp[-1]]["t1"],
                        "peak": max(runs[j]["peak"] for j in grp), "count": len(grp), "returns": True})
            continue
        used.add(i)
        out.append({"kind": "hold", "term": r["term"], "t0": r["t0"], "t1": r["t1"], "peak": r["peak"],
                    "returns": r["t1"] < T - 3})
    return sorted(out, key=lambda e: e["t0"])


_TERM_PHRASE = {"Head up": "tilts the head back to look up", "Head down": "lowers the head to look down",
                "Head turns left": "turns the head to the left", "Head turns right": "turns the head to the right",
                "Head tilts left": "tilts the head to the left", "Head tilts right": "tilts the head to the right"}
_TERM_ACTION = {"Head up": "look up", "Head down": "look down", "Head turns left": "turn left",
                "Head turns right": "turn right", "Head tilts left": "tilt left", "Head tilts right": "tilt right"}


def detail_head_pose_caption(motion, rng: np.random.Generator, confirm: bool = True) -> str:
    """Chronological head-pose description using Table 1's directions (no numbers); ``confirm``: see
    :func:`head_events_from_motion`."""
    ev = head_events_from_motion(motion, confirm=confirm)
    subj = _pick(rng, ["The person", "The speaker", "The subject"])
    if not ev:
        return _pick(rng, ["The head stays almost still, facing forward throughout.",
                           "The person keeps the head steady and faces forward the whole time.",
                           "The head barely moves and stays facing the front."])
    parts = []
    for i, e in enumerate(ev):
        size = "slightly " if e["peak"] < 0.12 else ("far " if e["peak"] > 0.3 else "")
        if e["kind"] == "nod":
            p = "nods " + ("once" if e["count"] == 1 else "twice" if e["count"] == 2 else "several times")
        elif e["kind"] == "shake":
            p = _pick(rng, ["shakes the head from side to side", "shakes the head"])
        else:
            verb = _TERM_PHRASE[e["term"]]
            p = verb.replace("the head", f"the head {size}".strip()) if size else verb
            p += _pick(rng, [" and then returns to the centre", " before coming back"]) if e["returns"] \
                else _pick(rng, [" and holds that position", " and stays there"])
        parts.append(p)
    text = f"{subj} {parts[0]}"
    for p in parts[1:4]:
        text += _pick(rng, [", then ", ", after that ", ", next "]) + p
    return text + "."


def infer_labels(motion, confirm: bool = True) -> tuple[list[str], list[str]]:
    """Guess (action labels, emotion labels) from a stand-in motion when no ground truth is known
    (``confirm``: see :func:`head_events_from_motion`)."""
    from .synth_face import EMOTION_UNITS
    m = np.asarray(motion)
    actions = []
    jaw = m[:, 53]
    if jaw.std() > 0.02 and (np.abs(np.diff(jaw)) > 0.01).mean() > 0.2:
        actions.append("talk")
    emotions = []
    win = FPS
    for s in range(0, max(len(m) - win // 2, 1), win):
        seg = m[s:s + win, :50].mean(0)
        best, score = "neutral", 0.25
        for e, rec in EMOTION_UNITS.items():
            if not rec:
                continue
            names = [k for k in rec if k != "jaw"]
            v = float(np.mean([min(seg[unit(k)] / rec[k], 1.2) for k in names]))
            if v > score:
                best, score = e, v
        emotions.append(best)
    emotions = _dedupe(emotions)
    emo_action = {"happy": "smile", "sad": "frown", "angry": "glare", "surprised": "raise eyebrows",
                  "disgusted": "sneer", "fearful": "look scared"}
    for e in emotions:
        if e in emo_action:
            actions.append(emo_action[e])
    for e in head_events_from_motion(m, confirm=confirm):
        actions.append("nod" if e["kind"] == "nod" else "shake head" if e["kind"] == "shake"
                       else _TERM_ACTION[e["term"]])
    return _dedupe(actions) or ["stay still"], emotions or ["neutral"]


class TemplateCaptioner:
    """Offline captioner: the five MMHead caption kinds from labels and the motion itself.
    ``confirm_gestures``: nods and shakes read off the motion must pass the evaluator's rules
    (:func:`head_events_from_motion`); False reproduces corpora made before 6 Dec 2026, session 10."""

    def __init__(self, confirm_gestures: bool = True):
        self.confirm_gestures = confirm_gestures

    def __call__(self, motion, action_labels: list[str] | None = None, emotion_labels: list[str] | None = None,
                 rng: np.random.Generator | None = None) -> dict[str, str]:
        rng = rng or np.random.default_rng(0)
        if action_labels is None or emotion_labels is None:
            a, e = infer_labels(motion, self.confirm_gestures)
            action_labels = action_labels if action_labels is not None else a
            emotion_labels = emotion_labels if emotion_labels is not None else e
        return {"action": action_caption(action_labels, rng),
                "emotion": emotion_caption(emotion_labels, rng),
                "emotion_scenario": scenario_caption(emotion_labels, rng),
                "detail_expression": detail_expression_caption(motion, rng),
                "detail_head_pose": detail_head_pose_caption(motion, rng, self.confirm_gestures)}


def llm_captions(motion, action_labels, emotion_labels, url: str, model: str, api_key: str | None = None) -> dict:
    """The five captions from an OpenAI-compatible endpoint (the scenario prompt uses the emotion reply)."""
    prompts = build_prompts(motion, action_labels, emotion_labels)
    out = {"emotion": call_llm(url, model, prompts["emotion"], api_key=api_key)}
    prompts = build_prompts(motion, action_labels, emotion_labels, emotion_text=out["emotion"])
    for k in ("action", "emotion_scenario", "detail_expression", "detail_head_pose"):
        out[k] = call_llm(url, model, prompts[k], api_key=api_key)
    return out


def annotate_corpus(data, out=None, ids=None, llm_url: str | None = None, llm_model: str = "default",
                    write_captions: bool = False, limit: int | None = None, api_key: str | None = None) -> dict:
    """Annotate clips of an MMHead-layout folder.

    For each clip writes ``OUT/<ID>.json`` with the every-3rd-frame lists, the label sets (from
    ``synth_meta`` when present, otherwise inferred from the motion), the five prompts and the five
    captions (template captioner, or the LLM when ``llm_url`` is given). With ``write_captions`` the
    captions also replace ``DATA/text_annotations/<kind>/<ID>.txt``.
    """
    import os
    import zlib
    from pathlib import Path

    from tqdm import tqdm

    from .mmhead import MMHeadCorpus
    data = Path(data)
    out = Path(out) if out else data / "annotations"
    out.mkdir(parents=True, exist_ok=True)
    corpus = MMHeadCorpus(data)
    todo = list(ids) if ids else corpus.ids()
    todo = todo[:limit] if limit else todo
    key = api_key or os.environ.get("OPENAI_API_KEY")
    captioner = TemplateCaptioner()
    n = 0
    for cid in tqdm(todo, desc="annotate", unit="clip"):
        clip = corpus.get(cid)
        acts = clip.meta.get("action_labels")
        emos = clip.meta.get("emotion_labels")
        if acts is None or emos is None:
            ia, ie = infer_labels(clip.motion)
            acts, emos = acts or ia, emos or ie
        if llm_url:
            caps = llm_captions(clip.motion, acts, emos, llm_url, llm_model, api_key=key)
        else:
            caps = captioner(clip.motion, acts, emos, np.random.default_rng(zlib.crc32(cid.encode())))
        rec = {"id": cid, "action_labels": acts, "emotion_labels": emos,
               "frames": frame_descriptions(clip.motion),
               "prompts": build_prompts(clip.motion, acts, emos, emotion_text=caps["emotion"]),
               "captions": caps, "captioner": f"llm:{llm_model}" if llm_url else "template"}
        (out / f"{cid}.json").write_text(json.dumps(rec, indent=1))
        if write_captions:
            for kind in CAPTION_KINDS:
                d = data / "text_annotations" / kind
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{cid}.txt").write_text(caps[kind] + "\n")
        n += 1
    return {"annotated": n, "out": str(out), "captioner": "llm" if llm_url else "template",
            "load_errors": corpus.errors[:20]}
