"""Sentence generator for the synthetic talking corpus.

A tiny phrase grammar over word lists written for this project. Every sentence is built from a
template with slots filled by the clip's random generator, so the corpus has varied lengths,
rhythm and phoneme coverage (bilabials, rounded and spread vowels, open and close vowels).

    rng = np.random.default_rng(0)
    make_phrase(rng)          # -> "the quiet baker found a purple map near the old harbour"
    make_utterance(rng, 4.0)  # -> list of phrases, roughly 4 s of speech at a normal rate
"""
from __future__ import annotations

import numpy as np

NAMES = ["Mara", "Theo", "Bobby", "Nina", "Oscar", "Pablo", "June", "Milo", "Wendy", "Rosa",
         "Felix", "Ada", "Hugo", "Lena", "Victor", "Moe", "Ivy", "Boris", "Paula", "Omar"]
ADJ = ["quiet", "purple", "old", "tiny", "bright", "woolly", "broken", "lucky", "heavy", "smooth",
       "cheap", "brave", "sleepy", "modern", "cool", "warm", "proud", "muddy", "busy", "simple",
       "golden", "noisy", "wobbly", "careful", "pale", "round", "sharp", "loose", "moody", "shiny"]
NOUN = ["baker", "map", "boat", "window", "blue moon", "bicycle", "teapot", "mirror", "pumpkin",
        "market", "mountain", "letter", "rooftop", "pebble", "violin", "garden", "puppy", "notebook",
        "umbrella", "harbour", "bridge", "pillow", "robot", "forest", "music box", "balloon",
        "owl", "camera", "wagon", "kitchen", "meadow", "bottle", "ladder", "compass", "suitcase"]
PLACE = ["near the old harbour", "behind the bakery", "on the roof", "under the bridge",
         "by the window", "in the morning", "at the market", "after lunch", "before the storm",
         "next to the pool", "in the booth", "across the meadow", "on the bus", "down by the beach",
         "at the museum", "in the blue room", "over the moon", "beside the mailbox"]
VERB_PAST = ["found", "moved", "painted", "bought", "opened", "dropped", "borrowed", "fixed",
             "washed", "pushed", "measured", "carried", "wrapped", "polished", "lost", "built",
             "chose", "boiled", "mapped", "followed", "pulled", "weighed", "brought", "shaped"]
VERB_BASE = ["bring", "move", "paint", "buy", "open", "keep", "borrow", "fix", "wash", "push",
             "measure", "carry", "wrap", "polish", "build", "choose", "follow", "pull", "check", "see"]
FEEL = ["really", "pretty", "very", "quite", "so", "awfully", "truly", "a bit"]
FEEL_ADJ = ["amazing", "boring", "beautiful", "strange", "puzzling", "wonderful", "awful",
            "cheerful", "peaceful", "moody", "perfect", "useless", "smooth", "huge"]
OPENERS = ["well", "you know", "honestly", "oh", "wow", "okay", "by the way", "look",
           "hmm", "so", "anyway", "believe me", "mind you", "yes", "no way"]
TIME = ["yesterday", "this morning", "last week", "on Monday", "tonight", "every summer",
        "two days ago", "at noon", "later today", "once a month", "soon", "tomorrow"]

TEMPLATES = [
    "{name} {vpast} the {adj} {noun} {place}",
    "the {adj} {noun} was {feel} {fadj}",
    "{opener}, I think we should {vbase} the {noun} {time}",
    "did you {vbase} the {adj} {noun} {place}",
    "{time} {name} {vpast} a {adj} {noun}",
    "{opener}, that {noun} looks {feel} {fadj}",
    "please {vbase} the {noun} and the {noun2} {place}",
    "we {vpast} the {adj} {noun} {time}, and it was {fadj}",
    "{name} and {name2} {vpast} the {noun} {place}",
    "why would anyone {vbase} a {adj} {noun}",
    "{opener}, {name} never {vpast} the {noun}",
    "my {noun} is {feel} {fadj} {time}",
    "maybe {name} can {vbase} the {adj} {noun} for me",
    "{opener}",
    "I {vpast} it {place}",
    "look at the {adj} {noun}",
    "the {noun} and the {adj} {noun2} were {fadj} {time}",
    "{name} wanted to {vbase} every {adj} {noun} {place}",
]

# Rough speaking rate used only to size utterances (syllables are approximated by vowel groups).
SECONDS_PER_WORD = 0.33


def _pick(rng: np.random.Generator, words: list[str]) -> str:
    return words[int(rng.integers(len(words)))]


def make_phrase(rng: np.random.Generator) -> str:
    """One phrase from a random template (lower case, no final punctuation)."""
    t = _pick(rng, TEMPLATES)
    noun = _pick(rng, NOUN)
    noun2 = _pick(rng, [n for n in NOUN if n != noun])
    name = _pick(rng, NAMES)
    name2 = _pick(rng, [n for n in NAMES if n != name])
    return t.format(name=name, name2=name2, noun=noun, noun2=noun2, adj=_pick(rng, ADJ),
                    place=_pick(rng, PLACE), vpast=_pick(rng, VERB_PAST), vbase=_pick(rng, VERB_BASE),
                    feel=_pick(rng, FEEL), fadj=_pick(rng, FEEL_ADJ), opener=_pick(rng, OPENERS),
                    time=_pick(rng, TIME))


def finish(phrase: str, rng: np.random.Generator) -> str:
    """Capitalise and add a final mark ('?' for questions)."""
    p = phrase[0].upper() + phrase[1:]
    if phrase.split()[0] in ("did", "why"):
        return p + "?"
    return p + ("!" if rng.random() < 0.15 else ".")


def make_utterance(rng: np.random.Generator, speech_s: float) -> list[str]:
    """Phrases whose estimated speaking time adds up to about ``speech_s`` seconds (at least one)."""
    phrases, total = [], 0.0
    while not phrases or total < speech_s - 0.5:
        p = finish(make_phrase(rng), rng)
        est = len(p.split()) * SECONDS_PER_WORD
        if phrases and total + est > speech_s + 1.0:
            break
        phrases.append(p)
        total += est
    return phrases
