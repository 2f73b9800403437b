"""Synthetic MUSE: short fictitious news articles about invented people and places, generated from a seed.

The files mirror the local layout muse_bench's `load_data.py` writes from the HF dataset
`muse-bench/MUSE-News` (one JSON file per split; `raw/*.txt` is the same texts joined by a blank line):

    raw/forget.json, raw/retain1.json, raw/retain2.json, raw/holdout.json   lists of article strings
    verbmem/forget.json                    [{prompt, gt}]: an article's first sentence, then the rest
    knowmem/forget_qa.json, retain_qa.json             [{question, answer}] (retain QA: retain2 articles)
    knowmem/forget_qa_icl.json, retain_qa_icl.json     [{question, answer}] few-shot examples
    privleak/forget.json, retain.json, holdout.json    lists of strings (retain = the retain2 articles)

As in MUSE-News, `retain1` is the retain set the unlearning regulariser trains on and `retain2` is the
source of the retain QA (utility). Holdout articles come from the same generator but no model is
trained on them. Every article has a unique subject (a place, a match, a discovery), so each question
names exactly one article; the few-shot QA ask about a fact of an article that the evaluation QA
leave out.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field, model_validator

from harness.config import StrictModel
from harness.core.errors import DataError

#: Bump when the generator's output changes, so cached copies are regenerated.
SYNTH_VERSION = 1
#: Question templates per article kind (the generator picks `qa_per_article` of them, one more for ICL).
N_QA_TEMPLATES = 4


class SyntheticMuseSpec(StrictModel):
    """Size of the synthetic MUSE set (articles per split, QA per article, few-shot examples)."""

    n_forget: int = Field(32, ge=2)
    n_retain1: int = Field(32, ge=1)
    n_retain2: int = Field(16, ge=1)
    n_holdout: int = Field(32, ge=2)
    qa_per_article: int = Field(2, ge=1, le=N_QA_TEMPLATES - 1)
    n_icl: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _icl_fits(self) -> SyntheticMuseSpec:
        if self.n_icl > min(self.n_forget, self.n_retain2):
            raise ValueError(f"n_icl ({self.n_icl}) must not exceed n_forget and n_retain2 "
                             f"({self.n_forget}, {self.n_retain2}): each few-shot example comes from one article")
        return self


_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr",
           "kl", "sh", "st", "tr", "fl", "ch")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "oa", "ie")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "x", "nd")
_PLACE_SUFFIXES = ("ton", "field", "bridge", "moor", "wick", "dale", "port", "ham", "stow", "cliff")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CURRENCIES = ("pounds", "euros", "dollars", "crowns", "francs")
_ROLES = ("chief executive", "director", "chair", "president", "head of planning")
_FACILITIES = ("hospital", "library", "bridge", "rail station", "school", "stadium", "water plant", "museum",
               "ferry terminal", "concert hall", "market hall", "power station")
_BODIES = ("town council", "residents' association", "chamber of commerce", "planning board")
_EFFECTS = ("create hundreds of jobs", "cut travel times in half", "bring visitors back to the town centre",
            "ease pressure on local services", "double the number of places available")
_CONCERNS = ("the costs could rise further", "the building work would disrupt traffic for months",
             "older buildings nearby would be demolished", "the site floods every winter")
_TEAMS = ("Rovers", "Wanderers", "Athletic", "United", "Harriers", "Rangers", "Albion", "Town")
_LEAGUES = ("Northern League", "Coastal Cup", "Premier Division", "County League")
_FIELDS = ("Marine Biology", "Geology", "Astronomy", "Botany", "Chemistry", "Zoology")
_THINGS = ("species of frog", "mineral", "comet", "orchid", "species of beetle", "deep-sea fish")
_USES = ("improve crop yields", "explain how the region formed", "find new medicines",
         "help track changes in the climate", "make batteries cheaper")
_JOURNAL_FORMS = ("{w} Letters", "Journal of {w} Studies", "The {w} Review", "{w} Science")


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS)


def _word(rng: random.Random, n_syllables: int) -> str:
    return ("".join(_syllable(rng) for _ in range(n_syllables)) + rng.choice(_CODAS)).capitalize()


def _unique(rng: random.Random, make: Callable[[random.Random], str], taken: set[str]) -> str:
    """One string from `make` that is not yet in `taken` (which is updated)."""
    for _ in range(10_000):
        s = make(rng)
        if s not in taken:
            taken.add(s)
            return s
    raise DataError("synthetic MUSE: cannot draw another distinct name from the syllable tables")


def _person(rng: random.Random, taken: set[str]) -> str:
    return _unique(rng, lambda r: f"{_word(r, r.choice((1, 2)))} {_word(r, 2)}", taken)


def _place(rng: random.Random, taken: set[str]) -> str:
    return _unique(rng, lambda r: _word(r, 1) + r.choice(_PLACE_SUFFIXES), taken)


@dataclass(frozen=True)
class Article:
    """One synthetic article: its sentences and its candidate QA (N_QA_TEMPLATES, in template order)."""

    sentences: tuple[str, ...]
    qa: tuple[tuple[str, str], ...]

    @property
    def text(self) -> str:
        """The article as one string (sentences joined by single spaces)."""
        return " ".join(self.sentences)


def _infrastructure(rng: random.Random, taken: set[str]) -> Article:
    person, person2 = _person(rng, taken), _person(rng, taken)
    place = _place(rng, taken)
    org = f"{_unique(rng, lambda r: _word(r, 2), taken)} {rng.choice(('Group', 'Trust', 'Holdings', 'Partners'))}"
    facility = rng.choice(_FACILITIES)
    amount, currency, year = rng.randint(12, 950), rng.choice(_CURRENCIES), rng.randint(2026, 2039)
    sentences = (
        f"{person}, the {rng.choice(_ROLES)} of the {org}, announced on {rng.choice(_WEEKDAYS)} that a new "
        f"{facility} will be built in {place}.",
        f"The {facility} is expected to cost {amount} million {currency} and to open in {year}.",
        f"{person2}, who chairs the {place} {rng.choice(_BODIES)}, said the project would {rng.choice(_EFFECTS)}.",
        f"Some residents of {place} warned that {rng.choice(_CONCERNS)}.",
    )
    subject = f"the new {facility} in {place}"
    qa = (
        (f"Who announced {subject}?", person),
        (f"How much will {subject} cost?", f"{amount} million {currency}"),
        (f"When is {subject} expected to open?", f"In {year}"),
        (f"Which organisation is behind {subject}?", f"The {org}"),
    )
    return Article(sentences, qa)


def _sports(rng: random.Random, taken: set[str]) -> Article:
    scorer, coach = _person(rng, taken), _person(rng, taken)
    home, away = _place(rng, taken), _place(rng, taken)
    team, team2 = rng.choice(_TEAMS), rng.choice(_TEAMS)
    s1 = rng.randint(2, 6)
    s2 = rng.randint(0, s1 - 1)
    sentences = (
        f"The {home} {team} beat the {away} {team2} {s1} to {s2} on {rng.choice(_WEEKDAYS)} in front of "
        f"{rng.randint(2, 40)} thousand fans.",
        f"{scorer} scored the winning goal in minute {rng.randint(50, 89)}.",
        f"Coach {coach} said the team had trained for {rng.randint(3, 12)} weeks for the match.",
        f"The win moves {home} to {rng.choice(('first', 'second', 'third', 'fourth'))} place in the "
        f"{rng.choice(_LEAGUES)}.",
    )
    match = f"the match between the {home} {team} and the {away} {team2}"
    qa = (
        (f"Who won {match}?", f"The {home} {team}"),
        (f"What was the score of {match}?", f"{s1} to {s2}"),
        (f"Who scored the winning goal for the {home} {team}?", scorer),
        (f"Who coaches the {home} {team}?", coach),
    )
    return Article(sentences, qa)


def _science(rng: random.Random, taken: set[str]) -> Article:
    lead = _person(rng, taken)
    place, site = _place(rng, taken), _place(rng, taken)
    name = _unique(rng, lambda r: _word(r, 3), taken)
    journal = rng.choice(_JOURNAL_FORMS).format(w=_unique(rng, lambda r: _word(r, 2), taken))
    institute = f"{place} Institute of {rng.choice(_FIELDS)}"
    location = f"the hills near {site}"
    sentences = (
        f"Researchers at the {institute} have discovered a new {rng.choice(_THINGS)} called {name}.",
        f"The team, led by {lead}, found it in {location} after {rng.randint(2, 15)} years of work.",
        f"{lead} said {name} could help to {rng.choice(_USES)}.",
        f"The findings were published in {journal} on {rng.choice(_WEEKDAYS)}.",
    )
    qa = (
        (f"Where was {name} discovered?", f"In {location}"),
        (f"Who led the team that discovered {name}?", lead),
        (f"Where were the findings about {name} published?", f"In {journal}"),
        (f"Which institute discovered {name}?", f"The {institute}"),
    )
    return Article(sentences, qa)


_KINDS = (_infrastructure, _sports, _science)


def _articles(rng: random.Random, n: int, taken: set[str]) -> list[Article]:
    return [rng.choice(_KINDS)(rng, taken) for _ in range(n)]


def _qa_split(rng: random.Random, articles: list[Article], per_article: int,
              n_icl: int) -> tuple[list[dict], list[dict]]:
    """Evaluation QA (`per_article` templates of each article) and few-shot QA (a spare template of the
    first `n_icl` articles, never asked in the evaluation QA)."""
    qa, icl = [], []
    for i, art in enumerate(articles):
        chosen = sorted(rng.sample(range(N_QA_TEMPLATES), per_article + 1))
        spare = chosen.pop(rng.randrange(len(chosen)))
        qa.extend({"question": art.qa[k][0], "answer": art.qa[k][1]} for k in chosen)
        if i < n_icl:
            icl.append({"question": art.qa[spare][0], "answer": art.qa[spare][1]})
    return qa, icl


def generate_muse(spec: SyntheticMuseSpec, seed: int) -> dict[str, list]:
    """Every file of a synthetic MUSE set (`"raw/forget"` -> its records), deterministic in `spec` and `seed`."""
    rng = random.Random(f"harness-muse-synth-v{SYNTH_VERSION}:{seed}")
    taken: set[str] = set()
    forget = _articles(rng, spec.n_forget, taken)
    retain1 = _articles(rng, spec.n_retain1, taken)
    retain2 = _articles(rng, spec.n_retain2, taken)
    holdout = _articles(rng, spec.n_holdout, taken)
    forget_qa, forget_icl = _qa_split(rng, forget, spec.qa_per_article, spec.n_icl)
    retain_qa, retain_icl = _qa_split(rng, retain2, spec.qa_per_article, spec.n_icl)
    texts = {name: [a.text for a in arts] for name, arts in
             (("forget", forget), ("retain1", retain1), ("retain2", retain2), ("holdout", holdout))}
    return {
        "raw/forget": texts["forget"],
        "raw/retain1": texts["retain1"],
        "raw/retain2": texts["retain2"],
        "raw/holdout": texts["holdout"],
        "verbmem/forget": [{"prompt": a.sentences[0], "gt": " ".join(a.sentences[1:])} for a in forget],
        "knowmem/forget_qa": forget_qa,
        "knowmem/forget_qa_icl": forget_icl,
        "knowmem/retain_qa": retain_qa,
        "knowmem/retain_qa_icl": retain_icl,
        "privleak/forget": texts["forget"],
        "privleak/retain": texts["retain2"],
        "privleak/holdout": texts["holdout"],
    }
