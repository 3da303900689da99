"""The free-text style parser and gesture layer (engine/style.py): negation, intensity, mixtures, unknown
words, the empty style, the template captions it writes, and the gestures' shapes."""
import numpy as np
import pytest

from mm2face.engine.style import (CALM_CAPTION, EMOTION_CAPTIONS, HOLDS, NOD_AMPLITUDE_RAD, Gesture,
                                  GestureTrack, StyleParserConfig, gesture_offsets, parse_style, resolve_style)
from mm2face.training import metrics as M


def kinds(intent):
    return sorted(g.kind for g in intent.gestures)


@pytest.mark.parametrize("text, emotion", [
    ("in a great mood", "happy"), ("feeling low and lonely", "sad"), ("really mad about the ticket", "angry"),
    ("whoa, caught off guard", "surprised"), ("that smell is nasty", "disgusted"), ("scared stiff", "fearful"),
])
def test_everyday_emotion_words(text, emotion):
    i = parse_style(text)
    assert i.emotion == emotion and not i.calm
    assert i.caption() == EMOTION_CAPTIONS[emotion]


def test_negation_removes_the_emotion_and_keeps_the_rest():
    i = parse_style("not angry at all")
    assert i.emotion is None and i.calm and i.negated == ("angry",)
    assert i.caption() == CALM_CAPTION
    j = parse_style("not sad, actually pretty cheerful")
    assert j.emotion == "happy" and "sad" in j.negated
    k = parse_style("isn't happy, just nodding")
    assert k.emotion is None and kinds(k) == ["nod"]


def test_intensity_words_scale_the_expression():
    low, mid, high = (parse_style(t) for t in ("slightly amused", "amused", "extremely amused"))
    assert low.emotion == mid.emotion == high.emotion == "happy"
    assert low.intensity < mid.intensity < high.intensity
    assert low.expression_gain() < mid.expression_gain() == 1.0 < high.expression_gain()
    assert parse_style("very calm").expression_gain() == 1.0        # no emotion: nothing to scale


def test_expression_gain_scales_emotion_units_only_and_fades():
    from mm2face.engine.units import UNIT_INDEX
    p = np.full((50, 56), 0.5, np.float32)
    GestureTrack((), 0, gain=0.6).apply(p, 0, "standin")
    assert p[0, UNIT_INDEX["lip_corner_puller_left"]] == pytest.approx(0.3)
    assert p[0, UNIT_INDEX["lips_part"]] == 0.5 and p[0, 53] == 0.5        # articulation and jaw untouched
    q = np.full((50, 56), 0.5, np.float32)
    GestureTrack((), 0, gain=0.6).apply(q, 0, "flame")                      # FLAME's PCA slots: no gain
    assert (q == 0.5).all()
    g = GestureTrack((), 0, gain=1.5).then((), 10, 20, gain=0.5).gains(0, 40)
    assert g[0] == pytest.approx(1.5) and g[-1] == pytest.approx(0.5) and np.all(np.diff(g) <= 1e-6)


def test_mixtures_keep_every_cue():
    i = parse_style("cheerful, nods a lot")
    assert i.emotion == "happy" and kinds(i) == ["nod"]
    assert i.gestures[0].rate > 1.0                      # "a lot": more often
    j = parse_style("sad, looking down at the floor and shaking the head")
    assert j.emotion == "sad" and kinds(j) == ["down", "shake"]
    both = parse_style("nods and then shakes the head")
    assert kinds(both) == ["nod", "shake"]
    seq = parse_style("happy, then suddenly terrified")
    assert [e for e, _ in seq.emotions] == ["happy", "fearful"]
    assert seq.caption() == "The person first looks happy, then becomes fearful."


@pytest.mark.parametrize("text, gesture", [
    ("nodding yes", "nod"), ("shakes the head no", "shake"), ("looks to the left", "turn_left"),
    ("turns right towards the window", "turn_right"), ("looks up at the stars", "up"),
    ("looks down at the phone", "down"), ("tilts the head left", "tilt_left"), ("tilts the head right", "tilt_right"),
])
def test_head_gestures(text, gesture):
    i = parse_style(text)
    assert kinds(i) == [gesture] and i.emotion is None and i.caption() == CALM_CAPTION


def test_mood_words_that_are_also_directions():
    assert kinds(parse_style("feeling a bit down")) == [] and parse_style("feeling a bit down").emotion == "sad"
    assert kinds(parse_style("looking down")) == ["down"] and parse_style("looking down").emotion is None


def test_empty_and_unknown_words_are_calm():
    for t in ("", "   ", None):
        r = resolve_style(t)
        assert r.caption == CALM_CAPTION and r.gestures == () and r.expression_gain == 1.0
    i = parse_style("zebra quantum spreadsheet")             # no encoder: unread, calm
    assert i.emotion is None and i.calm and i.source == ("none",)


class _FakeEncoder:
    """Embeds a text on the axis of the first prototype word it contains (a stand-in for MiniLM)."""
    def __init__(self, words):
        self.words = words

    def encode(self, texts):
        out = np.zeros((len(texts), len(self.words) + 1), np.float32)
        for r, t in enumerate(texts):
            hit = [j for j, w in enumerate(self.words) if w in t]
            out[r, hit[0] if hit else -1] = 1.0
        return out


def test_encoder_fallback_reads_clauses_the_lexicon_lacks():
    enc = _FakeEncoder(["joy", "crying", "temper", "astonish", "smell", "afraid", "neutral", "nodding"])
    i = parse_style("walking on air, full of joyfulness", enc)         # "joyfulness" is no lexicon word
    assert i.emotion == "happy" and any(s.startswith("encoder:happy") for s in i.source)
    j = parse_style("zebra quantum spreadsheet", enc)                  # far from every prototype
    assert j.emotion is None and j.source[0].startswith("encoder:none")
    k = parse_style("zebra quantum spreadsheet", enc, StyleParserConfig(use_encoder=False))
    assert k.source == ("none",)


def test_parser_off_passes_raw_text():
    r = resolve_style("over the moon, nods a lot", parse=False)
    assert r.caption == "over the moon, nods a lot" and r.gestures == () and r.intent is None


def _check(rule_name, motion):
    rule = next(r for r in M.POSE_RULES if r.name == rule_name)
    return rule.score(motion) > rule.margin_rad


@pytest.mark.parametrize("gesture", ["nod", "shake", *HOLDS])
def test_each_gesture_passes_its_own_check_and_not_the_others(gesture):
    t = np.arange(100) / 25.0
    m = np.zeros((100, 56), np.float32)
    m[:, 50:53] = gesture_offsets([Gesture(gesture)], t)
    assert _check(gesture, m)
    others = {"nod": ["shake", "up"], "shake": ["nod", "up", "down"], "turn_left": ["shake", "turn_right"],
              "turn_right": ["shake", "turn_left"], "up": ["nod", "down"], "down": ["up", "nod"],
              "tilt_left": ["tilt_right"], "tilt_right": ["tilt_left"]}[gesture]
    for o in others:
        assert not _check(o, m), o


def test_gestures_start_from_rest_and_follow_amount():
    t = np.arange(100) / 25.0
    off = gesture_offsets([Gesture("nod")], t)
    assert np.abs(off[:5]).max() < 1e-6                     # eases in after the onset
    big = gesture_offsets([Gesture("nod", amount=1.5)], t)
    assert big[:, 0].max() == pytest.approx(1.5 * off[:, 0].max(), rel=1e-5)
    assert off[:, 0].max() == pytest.approx(NOD_AMPLITUDE_RAD, abs=0.01)
    with pytest.raises(ValueError, match="unknown gesture"):
        gesture_offsets([Gesture("wiggle")], t)


def test_gesture_track_cross_fades_without_a_jump():
    track = GestureTrack((Gesture("turn_left"),), 0).then((Gesture("turn_right"),), 50, 12)
    off = track.offsets(0, 100)[:, 1]
    assert off[49] > 0.2 and off[-1] < -0.2                  # left before the change, right after it
    assert np.abs(np.diff(off)).max() < 0.06                 # eased, no step
    assert np.array_equal(np.concatenate([track.offsets(0, 37), track.offsets(37, 63)]),
                          track.offsets(0, 100))             # any chunking gives the same frames
