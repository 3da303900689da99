"""Free-text styles: what the user typed -> what the model is asked for, plus a head-gesture layer.

The default model learned its style input from the synthetic corpus's caption templates
(training/annotate.py), so it follows "The person looks happy throughout." far better than
"over the moon about the news". This module puts a parser in front of it (pure, no I/O):

1. :func:`parse_style` reads the text into a :class:`StyleIntent`: emotions (with negation and an
   intensity), a calm flag, and head gestures (nod, shake, turn, look up/down, tilt) with an amount and
   a rate. It splits the text into clauses, reads a lexicon of synonyms first, and for a clause the
   lexicon has no word for, asks the sentence encoder (:mod:`mm2face.engine.text_encoder`, MiniLM) for
   the nearest canonical phrase (:data:`PROTOTYPES`) above :attr:`StyleParserConfig.min_similarity`.
2. :meth:`StyleIntent.caption` writes the intent in the corpus's own template wording; the model reads
   that caption (the user's text is kept for display). A style with no emotion, a negated one, or an
   empty style reads :data:`CALM_CAPTION`, never the unconditional null style (which shows whatever
   emotion the training clips had).
3. :func:`gesture_offsets` draws the head gestures as a deterministic offset on the head pose
   (axis-angle rad), a function of the time since the style was set only, so streaming equals offline;
   an intensity word scales the emotion's expression units (:data:`EXPRESSION_UNITS`) by the same layer.
   The model cannot nod or shake its head on request (0 of 8 shakes from template captions, nods of
   0.05-0.08 rad), so gestures are this layer's work, not the model's.

``StreamConfig.parse_styles`` / ``generate(parse_styles=False)`` turn the parser off (raw text to the
model, no gestures) for research.
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field

import numpy as np

from mm2face.engine.frame import FPS, HEAD
from mm2face.engine.units import UNIT_INDEX

EMOTIONS = ("happy", "sad", "angry", "surprised", "disgusted", "fearful")
GESTURES = ("nod", "shake", "turn_left", "turn_right", "up", "down", "tilt_left", "tilt_right")

# ---------------------------------------------------------------------------------------- lexicon
# Synonyms written as a thesaurus would list them (general English, not a test set); regexes over words.
EMOTION_LEXICON: dict[str, tuple[str, ...]] = {
    "happy": ("happy", "happier", "happily", "happiness", "joy", "joyful", "joyous", "cheerful", "cheery", "cheer",
              "glad", "pleased", "delighted", "delight", "smil\\w*", "grin\\w*", "beam\\w*", "laugh\\w*",
              "giggl\\w*", "chuckl\\w*", "merry", "jolly", "elated", "ecstatic", "overjoyed", "thrilled",
              "excited", "upbeat", "sunny", "bubbly", "chuffed", "amused", "content", "contented", "blissful",
              "euphoric", "jubilant", "over the moon", "on cloud nine", "in a (?:good|great) mood",
              "tickled", "stoked", "buzzing", "gleeful", "radiant", "good mood", "positive", "enthusiastic"),
    "sad": ("sad", "sadly", "sadness", "unhappy", "sorrow\\w*", "downcast", "grie\\w*", "mourn\\w*",
            "depress\\w*", "melanchol\\w*", "gloom\\w*", "miserable", "misery", "heartbroken", "heartbreak\\w*",
            "dejected", "despondent", "forlorn", "glum", "blue", "down", "low", "crestfallen", "disappointed",
            "tearful", "tears?", "crying", "cries", "cry", "weep\\w*", "sob\\w*", "upset", "lonely", "hurt",
            "devastated", "down in the dumps", "frown\\w*", "morose", "sombre", "somber", "wistful", "mopey",
            "mop\\w*", "broken-hearted", "bummed"),
    "angry": ("angry", "angrily", "anger", "mad", "furious", "fury", "rage", "raging", "enraged", "livid",
              "irate", "fuming", "seething", "seethes", "cross", "annoy\\w*", "irritat\\w*", "grumpy", "cranky",
              "grouchy", "irked", "indignant", "outraged", "hostile", "bitter", "resentful", "glar\\w*",
              "scowl\\w*", "pissed(?: off)?", "ticked off", "fed up", "heated", "exasperated", "frustrat\\w*",
              "infuriated", "incensed", "snappy", "testy", "vexed", "up in arms", "hot-headed", "stern"),
    "surprised": ("surpris\\w*", "amaz\\w*", "astonish\\w*", "astound\\w*", "shock\\w*", "startl\\w*", "stunned",
                  "stun\\w*", "flabbergasted", "gobsmacked", "dumbfounded", "speechless", "taken aback",
                  "caught off guard", "wow", "whoa", "woah", "omg", "unexpected\\w*", "can'?t believe",
                  "cannot believe", "didn'?t expect", "did not expect", "didn'?t see (?:that|it) coming",
                  "jaw[- ]drop\\w*", "wide[- ]eyed", "in awe", "awestruck", "bewildered", "raises? the eyebrows",
                  "eyebrows raised", "blown away", "agape"),
    "disgusted": ("disgust\\w*", "repuls\\w*", "revolt\\w*", "gross\\w*", "sneer\\w*", "yuck", "yuk", "eww+", "ew",
                  "ick", "icky", "vile", "nasty", "nauseat\\w*", "nauseous", "queasy", "sickened", "sick",
                  "gag\\w*", "retch\\w*", "stench", "stinks?", "stinky", "smelly", "rotten", "putrid", "foul",
                  "repugnant", "repellent", "loathing", "appalled", "distaste\\w*", "grimac\\w*", "turned off",
                  "can'?t stand", "cannot stand"),
    "fearful": ("fear\\w*", "afraid", "scared", "scary", "scare", "frighten\\w*", "terrif\\w*", "terror",
                "petrified", "panic\\w*", "anxious", "anxiety", "nervous\\w*", "worried", "worry\\w*", "uneasy",
                "jumpy", "jittery", "spooked", "creeped out", "alarmed", "horrified", "dread\\w*", "timid",
                "tense", "on edge", "shaken", "shaking with fear", "trembl\\w*", "shiver\\w*", "paranoid",
                "apprehensive", "fright"),
}
# words that name the absence of emotion (a calm style)
CALM_LEXICON = ("calm\\w*", "neutral", "composed", "relaxed", "serene", "placid", "flat", "monotone", "monotonous",
                "deadpan", "poker[- ]face\\w*", "straight face", "expressionless", "blank", "bored", "boring",
                "indifferent", "unemotional", "emotionless", "matter[- ]of[- ]fact", "plain", "even[- ]tempered",
                "level[- ]headed", "steady", "stoic", "laid[- ]back", "chill", "easygoing", "unbothered",
                "professional", "businesslike", "formal", "news\\w*", "reads?", "reading", "normal\\w*",
                "just talking", "no emotion", "no feelings?", "nothing special", "as usual")
INTENSITY_LEXICON: dict[str, float] = {  # multiplier on the emotion's strength
    "slightly": 0.6, "a bit": 0.6, "a little(?: bit)?": 0.6, "a touch": 0.6, "a tad": 0.6, "mildly": 0.6,
    "somewhat": 0.6, "kind of": 0.6, "kinda": 0.6, "sort of": 0.6, "faintly": 0.6, "subtly": 0.6,
    "barely": 0.6, "hint of": 0.6, "quietly": 0.8,
    "very": 1.4, "really": 1.2, "so": 1.2, "extremely": 1.5, "super": 1.4, "absolutely": 1.5, "utterly": 1.5,
    "totally": 1.4, "completely": 1.5, "incredibly": 1.5, "deeply": 1.4, "terribly": 1.4, "intensely": 1.5,
    "hugely": 1.4, "massively": 1.4, "extremely so": 1.5, "beyond": 1.4, "ridiculously": 1.5,
}
# negators: an emotion word after one of these, in the same clause, is not asked for
NEGATORS = ("not", "no", "never", "without", "isn'?t", "aren'?t", "wasn'?t", "don'?t", "doesn'?t", "nor",
            "neither", "hardly", "n't", "less", "zero", "free of", "instead of", "rather than")

# head gestures: (pattern, gesture); directions need a head/gaze word or a place on that side
_HEAD_VERB = r"(?:turn\w*|look\w*|glanc\w*|peek\w*|peer\w*|gaz\w*|star\w*|fac\w*|rotat\w*|check\w*|watch\w*|eyes?|head|glimps\w*|swivel\w*|keep\w* an eye)"
_SIDE = r"(?:(?:\w+\s+){0,5})"
GESTURE_LEXICON: tuple[tuple[str, str], ...] = (
    (r"\bnod\w*|\bsay\w*\s+yes|\bsaying\s+yes|\bbob\w*\s+(?:\w+\s+){0,2}(?:head|up and down)|\bup and down\b|"
     r"\bagree\w*", "nod"),
    (r"\bshak\w*\s+(?:\w+\s+){0,3}head|\bhead\s+shak\w*|\bhead[- ]shake|\bsay\w*\s+no\b|\bsaying\s+no\b|"
     r"\bside[- ]to[- ]side|\bno[, ]+no\b|\bdisagree\w*|\bdisapprov\w*|\bwag\w*\s+(?:\w+\s+){0,2}head", "shake"),
    (r"\b(?:tilt\w*|lean\w*|cock\w*|tip\w*)\s+" + _SIDE + r"left|\bleft shoulder", "tilt_left"),
    (r"\b(?:tilt\w*|lean\w*|cock\w*|tip\w*)\s+" + _SIDE + r"right|\bright shoulder", "tilt_right"),
    (r"\b" + _HEAD_VERB + r"\s+" + _SIDE + r"left\b|\bleft(?:\s+side|\s+hand side|wards)?\b", "turn_left"),
    (r"\b" + _HEAD_VERB + r"\s+" + _SIDE + r"right\b|\bright(?:\s+side|\s+hand side|wards)?\b", "turn_right"),
    (r"\b(?:look\w*|gaz\w*|star\w*|glanc\w*|peer\w*|head|eyes?|chin)\s+(?:\w+\s+){0,2}up\b|\bup(?:wards)? at\b|"
     r"\bsky\b|\bceiling\b|\bstars\b|\bheavens?\b|\bupwards?\b|\braises? (?:\w+\s+)?head\b|\blifts? (?:\w+\s+)?head\b", "up"),
    (r"\b(?:look\w*|gaz\w*|star\w*|glanc\w*|peer\w*|head|eyes?|chin)\s+(?:\w+\s+){0,2}down\b|\bdown(?:wards)? at\b|"
     r"\bfloor\b|\bground\b|\bfeet\b|\bshoes\b|\bdesk\b|\blap\b|\bbelow\b|\bdownwards?\b|\blowers? (?:\w+\s+)?head\b|"
     r"\bbows? (?:\w+\s+)?head\b|\bhead (?:is )?(?:hung|bowed|lowered)\b|\bphone\b|\bnotes\b", "down"),
)
AMOUNT_LEXICON: dict[str, float] = {  # gesture amplitude multiplier
    "slightly": 0.6, "a bit": 0.7, "a little": 0.7, "little": 0.7, "small": 0.7, "gently": 0.7, "subtly": 0.6,
    "far": 1.4, "big": 1.4, "vigorously": 1.5, "wildly": 1.5, "hard": 1.4, "strongly": 1.4, "firmly": 1.3,
    "emphatically": 1.4, "all the way": 1.5,
}
RATE_LEXICON: dict[str, float] = {  # how often a repeated gesture (nod, shake) comes back
    "a lot": 1.6, "lots": 1.6, "often": 1.6, "keeps?": 1.6, "keeping": 1.6, "constantly": 2.0, "repeatedly": 1.8,
    "all the time": 2.0, "along": 1.4, "again and again": 1.8, "frequently": 1.6, "occasionally": 0.6,
    "now and then": 0.6, "once": 0.5, "sometimes": 0.6, "slowly": 0.7, "rarely": 0.5,
}
# canonical phrases for the encoder fallback (clauses the lexicon has no word for)
PROTOTYPES: dict[str, tuple[str, ...]] = {
    "happy": ("happy and smiling", "full of joy", "in a wonderful mood", "celebrating good news"),
    "sad": ("sad and close to crying", "feeling down and hopeless", "mourning a loss", "disappointed and hurt"),
    "angry": ("angry and furious", "losing their temper", "outraged at someone", "annoyed and hostile"),
    "surprised": ("surprised and astonished", "shocked by something unexpected", "could not believe it"),
    "disgusted": ("disgusted by a bad smell", "revolted and nauseated", "something tastes horrible"),
    "fearful": ("scared and afraid", "frightened of danger", "anxious and panicking"),
    "calm": ("calm and neutral", "speaking in a flat voice", "an ordinary presentation", "no particular feeling",
             "reading a text aloud", "a normal conversation"),
    "nod": ("nodding the head yes",), "shake": ("shaking the head no",),
    "turn_left": ("turning the head to the left",), "turn_right": ("turning the head to the right",),
    "up": ("looking up above",), "down": ("looking down below",),
}

# ------------------------------------------------------------------------------------- rendering
# The corpus's own template wording (training/annotate.py: emotion_caption + action_caption), per emotion
# the variant whose emotion check scored highest text-only and talking (default model, 2 seeds, 4 s;
# docs/model.md, "Free-text styles").
EMOTION_CAPTIONS = {
    "happy": "The person looks happy throughout. The person smiles.",
    "sad": "The person looks sad throughout. The person frowns.",
    "angry": "The person looks angry throughout. The person glares.",
    "surprised": "The person looks surprised throughout.",
    "disgusted": "The person looks disgusted throughout.",
    "fearful": "The person looks fearful throughout.",
}
EMOTION_SEQUENCE_CAPTION = "The person first looks {a}, then becomes {b}."
CALM_CAPTION = "The person looks calm throughout."
# Intensity ("slightly", "extremely") scales the model's expression units that show emotion (brows, lids,
# cheeks, nose, mouth corners; not the units speech articulates with) by the intent's intensity. Scaling
# the text guidance instead did not order the faces (held-out v1, docs/model.md).
EXPRESSION_UNITS = ("inner_brow_raiser", "outer_brow_raiser_left", "outer_brow_raiser_right", "brow_lowerer",
                    "upper_lid_raiser", "cheek_raiser", "lid_tightener", "nose_wrinkler", "lip_corner_puller_left",
                    "lip_corner_puller_right", "dimpler", "lip_corner_depressor", "chin_raiser", "nostril_dilator")
INTENSITY_RANGE = (0.5, 1.5)  # the expression gain is clipped to this
_EXPR_IDX = [UNIT_INDEX[u] for u in EXPRESSION_UNITS]

# ------------------------------------------------------------------------------------ gesture layer
GESTURE_ONSET_S = 0.3         # first gesture this long after the style is set
NOD_AMPLITUDE_RAD = 0.12      # one nod: down and back (the corpus: 0.08-0.18 rad)
NOD_PERIOD_S = 0.6            # one nod's duration
NOD_COUNT = 2                 # nods per burst
NOD_EVERY_S = 3.0             # a burst this often at rate 1
SHAKE_AMPLITUDE_RAD = 0.16    # yaw swing each side (the corpus: 0.12-0.28 rad)
SHAKE_CYCLES = 2              # left-right cycles per burst
SHAKE_DURATION_S = 1.4        # one burst
SHAKE_EVERY_S = 3.5
HOLD_RISE_S = 0.6             # a held turn / look / tilt eases in over this
# held gestures: axis of frame[50:53] (0 rx, 1 ry, 2 rz), sign, amplitude rad (the corpus: 0.12-0.35)
# rx > 0 head down, ry > 0 turns left, rz > 0 tilts right (training/annotate.py, Table 1)
HOLDS: dict[str, tuple[int, int, float]] = {
    "turn_left": (1, +1, 0.25), "turn_right": (1, -1, 0.25), "up": (0, -1, 0.2), "down": (0, +1, 0.2),
    "tilt_left": (2, -1, 0.15), "tilt_right": (2, +1, 0.15),
}
MAX_AMOUNT = 1.6              # cap on the amplitude multiplier


@dataclass(frozen=True)
class Gesture:
    kind: str                 # one of GESTURES
    amount: float = 1.0       # amplitude multiplier
    rate: float = 1.0         # repeat-rate multiplier (nod, shake)


@dataclass(frozen=True)
class StyleIntent:
    """What a style asks for. ``emotions``: ordered (emotion, intensity) pairs, negated ones removed;
    ``negated``: emotions the text rules out; ``gestures``: head gestures; ``source``: per clause, how it
    was read ("lexicon", "encoder:<label>:<similarity>", "none")."""
    text: str
    emotions: tuple[tuple[str, float], ...] = ()
    negated: tuple[str, ...] = ()
    calm: bool = False
    gestures: tuple[Gesture, ...] = ()
    source: tuple[str, ...] = ()

    @property
    def emotion(self) -> str | None:
        return self.emotions[0][0] if self.emotions else None

    @property
    def intensity(self) -> float:
        return max((i for _, i in self.emotions), default=1.0)

    def caption(self) -> str:
        """The template-wording caption the model reads (:data:`CALM_CAPTION` without an emotion)."""
        if not self.emotions:
            return CALM_CAPTION
        names = [e for e, _ in self.emotions]
        names = [e for i, e in enumerate(names) if i == 0 or names[i - 1] != e]
        if len(names) == 1:
            return EMOTION_CAPTIONS[names[0]]
        return EMOTION_SEQUENCE_CAPTION.format(a=names[0], b=names[-1])

    def expression_gain(self) -> float:
        """Gain on :data:`EXPRESSION_UNITS` for the emotion's intensity (1 without an emotion)."""
        return float(np.clip(self.intensity, *INTENSITY_RANGE)) if self.emotions else 1.0


@dataclass
class StyleParserConfig:
    min_similarity: float = 0.45  # encoder fallback: the nearest prototype must be at least this close (MiniLM cosine)
    min_margin: float = 0.05      # ... and this much closer than the nearest calm prototype
    use_encoder: bool = True


def _alt(words) -> str:
    return r"\b(?:" + "|".join(words) + r")\b"


_EMO_RE = {e: re.compile(_alt(ws)) for e, ws in EMOTION_LEXICON.items()}
_CALM_RE = re.compile(_alt(CALM_LEXICON))
_NEG_RE = re.compile(r"(?:\b(?:" + "|".join(n for n in NEGATORS if n != "n't") + r")\b|n't\b)")
_INT_RE = [(re.compile(_alt([w])), v) for w, v in sorted(INTENSITY_LEXICON.items(), key=lambda x: -len(x[0]))]
_AMT_RE = [(re.compile(_alt([w])), v) for w, v in AMOUNT_LEXICON.items()]
_RATE_RE = [(re.compile(_alt([w])), v) for w, v in RATE_LEXICON.items()]
_GEST_RE = [(re.compile(p), g) for p, g in GESTURE_LEXICON]
_CLAUSE_SPLIT = re.compile(r"[,;.!?\n]+|\b(?:but|then|and then|while|though|although|yet|actually|instead)\b")
_OPPOSITE = {"turn_left": "turn_right", "turn_right": "turn_left", "up": "down", "down": "up",
             "tilt_left": "tilt_right", "tilt_right": "tilt_left"}


def clauses(text: str) -> list[str]:
    """Lower-case clauses of ``text`` (split at punctuation and at contrast/sequence words)."""
    t = (text or "").lower().replace("\u2019", "'")
    return [c.strip() for c in _CLAUSE_SPLIT.split(t) if c and c.strip()]


def _scale(clause: str, table) -> float:
    for rx, v in table:
        if rx.search(clause):
            return v
    return 1.0


def _emotion_hits(clause: str) -> list[tuple[int, str, bool]]:
    """(position, emotion, negated) for every emotion word in the clause."""
    negs = [m.start() for m in _NEG_RE.finditer(clause)]
    hits = []
    for e, rx in _EMO_RE.items():
        for m in rx.finditer(clause):
            if e == "sad" and m.group(0) in ("down", "low", "blue") and _is_literal(clause, m.group(0)):
                continue
            hits.append((m.start(), e, any(n < m.start() for n in negs)))
    return sorted(hits)


def _is_literal(clause: str, word: str) -> bool:
    """"down"/"low"/"blue" as a place or colour, not a mood ("looks down", "down at the floor")."""
    return bool(re.search(r"\b(?:look\w*|head|eyes?|gaz\w*|star\w*|glanc\w*|up and|bob\w*|sits?)\s+(?:\w+\s+){0,2}"
                          + word + r"\b|\b" + word + r"\s+(?:at|to|on|towards)\b", clause))


def _gestures(clause: str) -> list[Gesture]:
    found: list[str] = []
    for rx, g in _GEST_RE:
        if rx.search(clause) and g not in found:
            if g in ("turn_left", "turn_right") and any(x in found for x in ("tilt_left", "tilt_right")):
                continue                                  # "tilts the head left" is not also a turn
            found.append(g)
    if "nod" in found and "up and down" in clause:        # "bobs up and down" is a nod, not a look
        found = [g for g in found if g not in ("up", "down")]
    found = [g for g in found if _OPPOSITE.get(g) not in found]
    amount, rate = min(_scale(clause, _AMT_RE), MAX_AMOUNT), _scale(clause, _RATE_RE)
    return [Gesture(g, amount, rate) for g in found]


def parse_style(text: str, encoder=None, config: StyleParserConfig | None = None) -> StyleIntent:
    """Read a free-text style into a :class:`StyleIntent`.

    ``encoder``: an object with ``encode(list[str]) -> (N, dim)`` L2-normalised rows (the model's
    :class:`~mm2face.engine.text_encoder.TextEncoder`) for clauses the lexicon has no word for; None
    reads the lexicon only. An empty text is a calm intent."""
    cfg = config or StyleParserConfig()
    emotions: list[tuple[str, float]] = []
    negated: list[str] = []
    gestures: list[Gesture] = []
    sources: list[str] = []
    calm = False
    unread: list[str] = []
    for c in clauses(text):
        hits = _emotion_hits(c)
        g = _gestures(c)
        gestures += [x for x in g if x.kind not in {y.kind for y in gestures}]
        pos = [(e, _scale(c, _INT_RE)) for _, e, neg in hits if not neg]
        negated += [e for _, e, neg in hits if neg]
        emotions += [p for p in pos if p[0] not in {e for e, _ in emotions}]
        is_calm = bool(_CALM_RE.search(c)) or (bool(hits) and not pos)
        calm |= is_calm and not pos
        if hits or g or is_calm:
            sources.append("lexicon")
        else:
            unread.append(c)
    if unread and cfg.use_encoder and encoder is not None:
        for c, (label, sim) in zip(unread, nearest_prototypes(unread, encoder, cfg)):
            sources.append(f"encoder:{label}:{sim:.2f}")
            if label in EMOTIONS and label not in {e for e, _ in emotions} and label not in negated:
                emotions.append((label, 1.0))
            elif label in GESTURES and label not in {x.kind for x in gestures}:
                gestures.append(Gesture(label))
            elif label == "calm":
                calm = True
    elif unread:
        sources += ["none"] * len(unread)
    return StyleIntent(text=text or "", emotions=tuple(emotions), negated=tuple(dict.fromkeys(negated)),
                       calm=calm or not emotions, gestures=tuple(gestures), source=tuple(sources))


_PROTO_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # encoder -> (labels, (P, dim))


def nearest_prototypes(texts: list[str], encoder, config: StyleParserConfig) -> list[tuple[str, float]]:
    """For each text the nearest :data:`PROTOTYPES` label and its cosine similarity; ``("none", sim)``
    when it is not close enough (:attr:`StyleParserConfig.min_similarity`) or not clearly closer than
    the nearest calm phrase (:attr:`StyleParserConfig.min_margin`)."""
    if encoder not in _PROTO_CACHE:
        labels = [lab for lab, ps in PROTOTYPES.items() for _ in ps]
        _PROTO_CACHE[encoder] = (labels, np.asarray(encoder.encode([p for ps in PROTOTYPES.values() for p in ps])))
    labels, protos = _PROTO_CACHE[encoder]
    sims = np.asarray(encoder.encode(list(texts))) @ protos.T                     # (N, P)
    calm_idx = [i for i, lab in enumerate(labels) if lab == "calm"]
    out = []
    for row in sims:
        j = int(row.argmax())
        best, calm_best = float(row[j]), float(row[calm_idx].max())
        if labels[j] == "calm":
            out.append(("calm", best) if best >= config.min_similarity else ("none", best))
        elif best >= config.min_similarity and best - calm_best >= config.min_margin:
            out.append((labels[j], best))
        else:
            out.append(("none", best))
    return out


# ------------------------------------------------------------------------------------- gestures

def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def gesture_offsets(gestures, t_s: np.ndarray) -> np.ndarray:
    """Head-pose offset ``(n, 3)`` float32 rad (rx, ry, rz) at ``t_s (n,)`` seconds since the style was
    set (negative = before: zero). Nods and shakes come in bursts (:data:`NOD_EVERY_S`,
    :data:`SHAKE_EVERY_S`, divided by the gesture's rate); turns, looks and tilts ease into a held
    offset. The offset adds to the model's own head motion."""
    t = np.asarray(t_s, np.float64)
    out = np.zeros((len(t), 3), np.float64)
    for g in gestures or ():
        amt = min(float(g.amount), MAX_AMOUNT)
        u = t - GESTURE_ONSET_S
        if g.kind == "nod":
            every = max(NOD_EVERY_S / max(g.rate, 1e-3), NOD_PERIOD_S * NOD_COUNT + 0.2)
            ph = np.mod(u, every) / NOD_PERIOD_S
            on = (u >= 0) & (ph < NOD_COUNT)
            out[:, 0] += np.where(on, np.sin(np.pi * ph) ** 2, 0.0) * NOD_AMPLITUDE_RAD * amt
        elif g.kind == "shake":
            every = max(SHAKE_EVERY_S / max(g.rate, 1e-3), SHAKE_DURATION_S + 0.2)
            ph = np.mod(u, every) / SHAKE_DURATION_S
            on = (u >= 0) & (ph < 1.0)
            wave = np.sin(2 * np.pi * SHAKE_CYCLES * ph) * np.sin(np.pi * ph)
            out[:, 1] += np.where(on, wave, 0.0) * SHAKE_AMPLITUDE_RAD * amt
        elif g.kind in HOLDS:
            axis, sign, amp = HOLDS[g.kind]
            out[:, axis] += sign * amp * amt * _smoothstep(u / HOLD_RISE_S)
        else:
            raise ValueError(f"unknown gesture {g.kind!r}; known: {', '.join(GESTURES)}")
    return out.astype(np.float32)


@dataclass(frozen=True)
class GestureTrack:
    """The layer's course over a stream: the gestures and expression gain of the style set at frame
    ``frame0``, cross-faded over ``blend_frames`` from the track before it (``prev``), so a style change
    eases from where the head is. A pure function of the frame number: streaming and offline agree."""
    gestures: tuple[Gesture, ...] = ()
    frame0: int = 0
    blend_frames: int = 1
    prev: "GestureTrack | None" = None
    gain: float = 1.0                 # expression gain (intensity) on EXPRESSION_UNITS

    @property
    def active(self) -> bool:
        """Does the track change anything (gestures, a gain, or a fade from an earlier track)?"""
        return bool(self.gestures) or self.gain != 1.0 or self.prev is not None

    def _weight(self, seq: np.ndarray) -> np.ndarray:
        return np.clip((seq - self.frame0 + 1) / max(self.blend_frames, 1), 0.0, 1.0).astype(np.float32)

    def offsets(self, seq0: int, n: int) -> np.ndarray:
        """Head-pose offsets ``(n, 3)`` float32 rad for frames ``seq0 .. seq0 + n - 1``."""
        seq = np.arange(seq0, seq0 + n)
        own = gesture_offsets(self.gestures, (seq - self.frame0) / FPS)
        if self.prev is None:
            return own
        w = self._weight(seq)[:, None]
        return self.prev.offsets(seq0, n) * (1 - w) + own * w

    def gains(self, seq0: int, n: int) -> np.ndarray:
        """Expression gains ``(n,)`` float32 for frames ``seq0 .. seq0 + n - 1``."""
        own = np.full(n, self.gain, np.float32)
        if self.prev is None:
            return own
        w = self._weight(np.arange(seq0, seq0 + n))
        return self.prev.gains(seq0, n) * (1 - w) + own * w

    def then(self, gestures, frame0: int, blend_frames: int, gain: float = 1.0) -> "GestureTrack":
        """The track after a style change at ``frame0``; finished cross-fades are dropped from the chain."""
        cur = self
        if cur.prev is not None and frame0 >= cur.frame0 + cur.blend_frames - 1:
            cur = GestureTrack(cur.gestures, cur.frame0, gain=cur.gain)
        if not cur.active and not gestures and gain == 1.0:
            return GestureTrack((), frame0)
        return GestureTrack(tuple(gestures), frame0, blend_frames, cur, float(gain))

    def apply(self, params, seq0: int, head: str):
        """Add the head offsets to ``params (n, 56)`` (numpy or torch, in place) and, for the stand-in
        head, scale its expression units by the gain; returns ``params``."""
        if not self.active:
            return params
        n = len(params)
        off, g = self.offsets(seq0, n), self.gains(seq0, n)
        if hasattr(params, "new_tensor"):                      # torch
            off, g = params.new_tensor(off), params.new_tensor(g)
        params[:, HEAD] += off
        if head == "standin" and (self.gain != 1.0 or self.prev is not None):
            params[:, _EXPR_IDX] *= g[:, None]
        return params


@dataclass
class ResolvedStyle:
    """What the engine does with one style text: the caption the model reads, the gestures the layer
    draws, and the expression gain (intensity). ``intent`` is None when the parser is off."""
    text: str
    caption: str
    gestures: tuple[Gesture, ...] = ()
    expression_gain: float = 1.0
    intent: StyleIntent | None = field(default=None, repr=False)


def resolve_style(text: str, encoder=None, parse: bool = True, config: StyleParserConfig | None = None) -> ResolvedStyle:
    """``text`` -> :class:`ResolvedStyle`. ``parse=False``: the raw text goes to the model, no gestures."""
    text = "" if text is None else str(text)
    if not parse:
        return ResolvedStyle(text=text, caption=text)
    intent = parse_style(text, encoder, config)
    return ResolvedStyle(text=text, caption=intent.caption(), gestures=intent.gestures,
                         expression_gain=intent.expression_gain(), intent=intent)
