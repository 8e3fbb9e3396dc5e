"""A small English grammar: everyday sentences over a constrained vocabulary.

The sentences of ``sentences()`` are drawn from a dozen templates (requests,
descriptions, times, phone numbers, ...) whose slots take words from short
lists, so that the whole corpus uses about 170 words, each of which occurs
thousands of times, while almost every sentence is new.  A model therefore
cannot learn the corpus by heart: it must learn what each word sounds like,
which a tiny speech LM can do in minutes of CPU training.  Like AN4 or
TIDIGITS for ASR toolkits, it is a corpus for showing that the pipeline
learns, not for measuring a model's English.
"""

from __future__ import annotations

import random

NAMES = "anna ben clara david emma frank grace henry lucy mark nina oscar paul rose sam tom".split()
COLORS = "red green blue yellow black white brown pink".split()
SIZES = "big small old new little heavy".split()
THINGS = "apple ball book box car chair cup door hat key lamp pen phone shoe table bag bottle clock window bed".split()
THINGS_PL = "apples balls books boxes cars chairs cups doors hats keys lamps pens phones shoes tables bags bottles clocks windows beds".split()
ANIMALS = "cat dog bird horse cow duck rabbit mouse".split()
ANIMALS_PL = "cats dogs birds horses cows ducks rabbits mice".split()
ROOMS = "kitchen garden office bedroom garage hall bathroom cellar".split()
PLACES = "school park station library market beach city river".split()
VERBS_S = "likes wants needs finds sees buys sells paints opens carries".split()
VERBS = "take bring move open close find clean paint wash carry".split()
NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty".split()
HOURS = "one two three four five six seven eight nine ten eleven twelve".split()
MINUTES = ["fifteen", "thirty", "forty five", "o'clock"]
DIGITS = "zero one two three four five six seven eight nine".split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
WHEN = DAYS + "today tomorrow tonight".split()
PREPS = "on under near behind".split()


def _minutes(rng: random.Random) -> str:
    return rng.choice(MINUTES)


TEMPLATES = [
    lambda r: f"{r.choice(NAMES)} {r.choice(VERBS_S)} the {r.choice(SIZES + COLORS)} {r.choice(THINGS)}",
    lambda r: f"please {r.choice(VERBS)} the {r.choice(COLORS)} {r.choice(THINGS)} to the {r.choice(ROOMS)}",
    lambda r: f"there are {r.choice(NUMBERS)} {r.choice(COLORS + SIZES)} {r.choice(THINGS_PL)} in the {r.choice(ROOMS)}",
    lambda r: f"turn {r.choice(['on', 'off'])} the {r.choice(ROOMS)} lights at {r.choice(HOURS)} {_minutes(r)}",
    lambda r: f"call {r.choice(NAMES)} at " + " ".join(r.choice(DIGITS) for _ in range(r.randint(3, 5))),
    lambda r: f"{r.choice(NAMES)} will {r.choice(VERBS)} the {r.choice(THINGS)} {r.choice(WHEN)}",
    lambda r: f"the {r.choice(SIZES + COLORS)} {r.choice(ANIMALS)} is {r.choice(PREPS)} the {r.choice(THINGS)}",
    lambda r: f"set an alarm for {r.choice(HOURS)} {_minutes(r)} on {r.choice(DAYS)}",
    lambda r: f"where is the {r.choice(COLORS)} {r.choice(THINGS)}",
    lambda r: f"{r.choice(NAMES)} and {r.choice(NAMES)} have {r.choice(NUMBERS)} {r.choice(ANIMALS_PL)}",
    lambda r: f"{r.choice(NAMES)} goes to the {r.choice(PLACES)} on {r.choice(DAYS)}",
    lambda r: f"my {r.choice(ANIMALS)} sleeps {r.choice(PREPS)} the {r.choice(COLORS)} {r.choice(THINGS)}",
]


def sentence(rng: random.Random) -> str:
    return rng.choice(TEMPLATES)(rng)


def sentences(n: int, rng: random.Random, exclude: set[str] = frozenset()) -> list[str]:
    """``n`` distinct sentences, none of them in ``exclude``."""
    out: dict[str, None] = {}
    tries = 0
    while len(out) < n:
        s = sentence(rng)
        tries += 1
        if s not in exclude:
            out[s] = None
        if tries > 50 * n + 1000:
            raise ValueError(f"the grammar gave only {len(out)} distinct sentences in {tries} draws (asked for {n})")
    return list(out)


def vocabulary() -> set[str]:
    words: set[str] = set()
    for lst in (NAMES, COLORS, SIZES, THINGS, THINGS_PL, ANIMALS, ANIMALS_PL, ROOMS, PLACES, VERBS_S, VERBS, NUMBERS,
                HOURS, DIGITS, DAYS, WHEN, PREPS, MINUTES):
        for item in lst:
            words.update(item.split())
    words.update("the please to there are in turn on off lights at call will is set an alarm for "
                 "where and have goes my sleeps".split())
    return words
