"""Synthetic TOFU: fictitious-author QA in the published locuslab/TOFU layout, generated from a seed.

The configs and fields follow the HF dataset `locuslab/TOFU`: `full`, `forgetXX` (the LAST XX% of
authors), `retainYY` (the complement), `forgetXX_perturbed` and `retain_perturbed` (question, answer,
paraphrased_answer, paraphrased_question, perturbed_answer: 5 strings), `real_authors` / `world_facts`
(question, option1..option4, answer) and their `_perturbed` versions (plus paraphrased_answer and
perturbed_answer: 3 strings).

As in TOFU's truth ratio (paper arXiv 2401.06121, section 2.2.3), each perturbed answer keeps the
template of the answer it is compared with: on forget/retain that is the paraphrased answer (only
the fact changes), on real authors / world facts the answer itself.

Real authors and world facts come from fixed lists (24 and 30 entries, taken in order). Asking for more cycles
through them with differently worded questions (up to 3 wordings each); beyond that DataError.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from harness.config import StrictModel
from harness.core.errors import DataError

#: Bump when the generator's output changes, so cached copies are regenerated.
SYNTH_VERSION = 1
FORGET_PERCENTS = (1, 5, 10)
N_PERTURBED_FICTITIOUS = 5
N_PERTURBED_KNOWLEDGE = 3


class SyntheticTofuSpec(StrictModel):
    """Size of the synthetic TOFU set (the published layout, fictitious authors)."""

    n_authors: int = Field(100, ge=10)
    qa_per_author: int = Field(4, ge=1, le=8)
    n_real_authors: int = Field(20, ge=1)
    n_world_facts: int = Field(20, ge=1)


CONFIGS = (
    "full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90",
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
    "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed",
)

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr",
           "th", "sh", "st", "tr", "gl", "fl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou", "ia")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "m", "x")
_CITY_SUFFIXES = ("ford", "haven", "mere", "wick", "stead", "bury", "port", "vale", "holm", "gate")
_GENRES = ("mystery", "fantasy", "science fiction", "romance", "horror", "historical fiction", "poetry",
           "thriller", "satire", "adventure", "crime", "memoir")
_PROFESSIONS = ("a baker", "a carpenter", "a nurse", "a teacher", "a pilot", "a farmer", "a tailor",
                "a doctor", "a fisherman", "a painter", "a librarian", "a mechanic", "a sailor", "a chemist",
                "a lawyer", "an architect", "a musician", "a potter", "a journalist", "an engineer")
_LANGUAGES = ("English", "French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish",
              "Polish", "Greek", "Turkish", "Japanese", "Korean", "Hindi", "Arabic", "Russian")
_AWARD_KINDS = ("Prize", "Medal", "Award")
_TITLE_ADJ = ("Silent", "Broken", "Golden", "Hidden", "Last", "Crimson", "Frozen", "Distant", "Quiet",
              "Burning", "Hollow", "Silver", "Wandering", "Forgotten", "Secret", "Endless", "Pale", "Wild",
              "Lonely", "Shattered")
_TITLE_NOUN = ("River", "Garden", "Lantern", "Mirror", "Harbor", "Forest", "Crown", "Letter", "Island",
               "Tower", "Storm", "Bridge", "Orchard", "Compass", "Feather", "Winter", "Door", "Clock",
               "Mountain", "Song")

# (author, book); the other authors serve as wrong answers
_REAL_AUTHORS = (
    ("Jane Austen", "Pride and Prejudice"), ("George Orwell", "Nineteen Eighty-Four"),
    ("Herman Melville", "Moby-Dick"), ("Leo Tolstoy", "War and Peace"),
    ("Charles Dickens", "Great Expectations"), ("Mark Twain", "Adventures of Huckleberry Finn"),
    ("Harper Lee", "To Kill a Mockingbird"), ("F. Scott Fitzgerald", "The Great Gatsby"),
    ("Mary Shelley", "Frankenstein"), ("Fyodor Dostoevsky", "Crime and Punishment"),
    ("Miguel de Cervantes", "Don Quixote"), ("Gabriel Garcia Marquez", "One Hundred Years of Solitude"),
    ("J. R. R. Tolkien", "The Hobbit"), ("Charlotte Bronte", "Jane Eyre"),
    ("Emily Bronte", "Wuthering Heights"), ("Victor Hugo", "Les Miserables"),
    ("Homer", "The Odyssey"), ("Franz Kafka", "The Trial"),
    ("Virginia Woolf", "Mrs Dalloway"), ("Ernest Hemingway", "The Old Man and the Sea"),
    ("Aldous Huxley", "Brave New World"), ("Chinua Achebe", "Things Fall Apart"),
    ("Toni Morrison", "Beloved"), ("John Steinbeck", "The Grapes of Wrath"),
)
_REAL_QUESTIONS = ("Who wrote '{book}'?", "Who is the author of '{book}'?", "Which writer wrote '{book}'?")

_CAPITALS = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"),
    ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Peru", "Lima"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Russia", "Moscow"), ("Ireland", "Dublin"), ("Mexico", "Mexico City"),
    ("Sweden", "Stockholm"), ("Austria", "Vienna"), ("Thailand", "Bangkok"),
)
_CAPITAL_QUESTIONS = ("What is the capital of {country}?", "Which city is the capital of {country}?",
                      "Name the capital city of {country}.")
# (question, answer, paraphrased answer, three wrong answers in the answer's template)
_OTHER_FACTS = (
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.",
     "The planet nearest the Sun is Mercury.",
     ("Venus is the planet closest to the Sun.", "Mars is the planet closest to the Sun.",
      "Jupiter is the planet closest to the Sun.")),
    ("What is the largest ocean on Earth?", "The Pacific is the largest ocean on Earth.",
     "Earth's largest ocean is the Pacific.",
     ("The Atlantic is the largest ocean on Earth.", "The Indian is the largest ocean on Earth.",
      "The Arctic is the largest ocean on Earth.")),
    ("How many continents are there?", "There are seven continents.", "The continents number seven.",
     ("There are five continents.", "There are six continents.", "There are nine continents.")),
    ("At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius.",
     "At sea level, water boils at 100 degrees Celsius.",
     ("Water boils at 80 degrees Celsius.", "Water boils at 120 degrees Celsius.",
      "Water boils at 90 degrees Celsius.")),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air.",
     "Carbon dioxide is the gas plants take in.",
     ("Plants take in helium from the air.", "Plants take in neon from the air.",
      "Plants take in hydrogen from the air.")),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa.",
     "Africa's longest river is the Nile.",
     ("The Congo is the longest river in Africa.", "The Niger is the longest river in Africa.",
      "The Zambezi is the longest river in Africa.")),
    ("How many days are in a leap year?", "A leap year has 366 days.", "There are 366 days in a leap year.",
     ("A leap year has 365 days.", "A leap year has 364 days.", "A leap year has 360 days.")),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au.",
     "Gold has the chemical symbol Au.",
     ("The chemical symbol for gold is Ag.", "The chemical symbol for gold is Go.",
      "The chemical symbol for gold is Gd.")),
    ("Which is the tallest mountain on Earth?", "Mount Everest is the tallest mountain on Earth.",
     "Earth's tallest mountain is Mount Everest.",
     ("K2 is the tallest mountain on Earth.", "Mont Blanc is the tallest mountain on Earth.",
      "Kilimanjaro is the tallest mountain on Earth.")),
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have eight legs.",
     ("A spider has six legs.", "A spider has ten legs.", "A spider has four legs.")),
)
_OTHER_QUESTION_PREFIXES = ("", "Tell me: ", "Quick question: ")


@dataclass(frozen=True)
class _Attribute:
    """One author attribute: how to ask it, state it, restate it, and draw wrong values."""

    name: str
    question: str
    paraphrased_question: str
    answer: str
    paraphrase: str


_ATTRIBUTES = (
    _Attribute("birthplace", "Where was {name} born?", "In which city was {name} born?",
               "{name} was born in {v}.", "The birthplace of {name} is {v}."),
    _Attribute("birth_year", "In what year was {name} born?", "When was {name} born?",
               "{name} was born in {v}.", "The year {name} was born is {v}."),
    _Attribute("genre", "What genre does {name} write?", "Which genre is {name} known for?",
               "{name} writes {v}.", "The genre of {name} is {v}."),
    _Attribute("father", "What did the father of {name} do?", "What was the job of {name}'s father?",
               "The father of {name} was {v}.", "{name} had a father who worked as {v}."),
    _Attribute("mother", "What did the mother of {name} do?", "What was the job of {name}'s mother?",
               "The mother of {name} was {v}.", "{name} had a mother who worked as {v}."),
    _Attribute("award", "Which award did {name} win?", "What prize has {name} received?",
               "{name} won the {v}.", "The {v} went to {name}."),
    _Attribute("book", "Name a book written by {name}.", "What is one book by {name}?",
               "{name} wrote '{v}'.", "'{v}' is a book by {name}."),
    _Attribute("language", "In which language does {name} write?", "What language are {name}'s books in?",
               "{name} writes in {v}.", "The books of {name} are written in {v}."),
)


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS)


def _word(rng: random.Random, n_syllables: int) -> str:
    return ("".join(_syllable(rng) for _ in range(n_syllables)) + rng.choice(_CODAS)).capitalize()


def _unique(rng: random.Random, n: int, make: Callable[[random.Random], str], taken: set[str]) -> list[str]:
    """`n` distinct strings from `make`, none of them in `taken` (which is updated)."""
    out: list[str] = []
    for _ in range(1000 * n + 1000):
        if len(out) == n:
            return out
        s = make(rng)
        if s not in taken:
            taken.add(s)
            out.append(s)
    raise DataError(f"synthetic TOFU: cannot draw {n} distinct names from the syllable tables")


def _value_pools(rng: random.Random, n_authors: int, taken: set[str]) -> dict[str, list[str]]:
    """Candidate values per attribute; invented ones (cities, awards, titles) are drawn from the seed."""
    titles = [f"The {a} {n}" for a in _TITLE_ADJ for n in _TITLE_NOUN]
    rng.shuffle(titles)
    cities = _unique(rng, 40, lambda r: _word(r, 1) + r.choice(_CITY_SUFFIXES), taken)
    awards = [f"{w} {rng.choice(_AWARD_KINDS)}" for w in _unique(rng, 24, lambda r: _word(r, 2), taken)]
    return {
        "birthplace": cities,
        "birth_year": [str(y) for y in range(1920, 2000)],
        "genre": list(_GENRES),
        "father": list(_PROFESSIONS),
        "mother": list(_PROFESSIONS),
        "award": awards,
        "book": titles[: max(2 * n_authors, 40)],
        "language": list(_LANGUAGES),
    }


def _author_names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    return _unique(rng, n, lambda r: f"{_word(r, 2)} {_word(r, r.choice((2, 3)))}", taken)


def _author_records(rng: random.Random, name: str, pools: dict[str, list[str]],
                    qa_per_author: int) -> list[dict]:
    """The perturbed-format QA records of one author (plain configs keep question and answer only)."""
    chosen = sorted(rng.sample(range(len(_ATTRIBUTES)), qa_per_author))
    records = []
    for i in chosen:
        attr = _ATTRIBUTES[i]
        pool = pools[attr.name]
        value = rng.choice(pool)
        wrong = rng.sample([v for v in pool if v != value], N_PERTURBED_FICTITIOUS)
        records.append({
            "question": attr.question.format(name=name),
            "answer": attr.answer.format(name=name, v=value),
            "paraphrased_answer": attr.paraphrase.format(name=name, v=value),
            "paraphrased_question": attr.paraphrased_question.format(name=name),
            "perturbed_answer": [attr.paraphrase.format(name=name, v=w) for w in wrong],
        })
    return records


def _with_options(rng: random.Random, question: str, answer: str, paraphrase: str,
                  wrong: list[str]) -> dict:
    """A real-authors / world-facts record: options are the answer and its 3 wrong versions, shuffled."""
    options = [answer, *wrong]
    rng.shuffle(options)
    rec: dict = {"question": question}
    rec.update({f"option{i + 1}": o for i, o in enumerate(options)})
    rec.update({"answer": answer, "paraphrased_answer": paraphrase, "perturbed_answer": list(wrong)})
    return rec


def _check_capacity(kind: str, n: int, available: int) -> None:
    if n > available:
        raise DataError(f"synthetic TOFU: benchmark.synthetic.n_{kind} = {n} exceeds the {available} "
                        f"distinct {kind.replace('_', ' ')} questions this generator holds")


def _real_author_records(rng: random.Random, n: int) -> list[dict]:
    _check_capacity("real_authors", n, len(_REAL_AUTHORS) * len(_REAL_QUESTIONS))
    names = [a for a, _ in _REAL_AUTHORS]
    out = []
    for k in range(n):
        author, book = _REAL_AUTHORS[k % len(_REAL_AUTHORS)]
        question = _REAL_QUESTIONS[k // len(_REAL_AUTHORS)].format(book=book)
        wrong = [f"{w} wrote '{book}'." for w in rng.sample([x for x in names if x != author], 3)]
        out.append(_with_options(rng, question, f"{author} wrote '{book}'.",
                                 f"'{book}' was written by {author}.", wrong))
    return out


def _capital_record(rng: random.Random, k: int, variant: int) -> dict:
    country, city = _CAPITALS[k]
    wrong = rng.sample([c for _, c in _CAPITALS if c != city], 3)
    return _with_options(rng, _CAPITAL_QUESTIONS[variant].format(country=country),
                         f"The capital of {country} is {city}.", f"{city} is the capital city of {country}.",
                         [f"The capital of {country} is {w}." for w in wrong])


def _world_fact_records(rng: random.Random, n: int) -> list[dict]:
    n_base = len(_CAPITALS) + len(_OTHER_FACTS)
    _check_capacity("world_facts", n, n_base * len(_CAPITAL_QUESTIONS))
    out = []
    for k in range(n):
        i, variant = k % n_base, k // n_base
        if i < len(_CAPITALS):
            out.append(_capital_record(rng, i, variant))
        else:
            question, answer, paraphrase, wrong = _OTHER_FACTS[i - len(_CAPITALS)]
            out.append(_with_options(rng, _OTHER_QUESTION_PREFIXES[variant] + question, answer, paraphrase,
                                     list(wrong)))
    return out


def n_forget_authors(n_authors: int, percent: int) -> int:
    """Authors in forgetXX: XX% of them (at least one), taken from the end as in TOFU."""
    return max(1, n_authors * percent // 100)


def _plain(records: list[dict]) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in records]


def _knowledge_plain(records: list[dict]) -> list[dict]:
    keys = ("question", "option1", "option2", "option3", "option4", "answer")
    return [{k: r[k] for k in keys} for r in records]


def generate_tofu(spec: SyntheticTofuSpec, seed: int) -> dict[str, list[dict]]:
    """All TOFU configs (config name -> records) of a synthetic set, deterministic in `spec` and `seed`."""
    rng = random.Random(f"harness-tofu-synth-v{SYNTH_VERSION}:{seed}")
    taken: set[str] = set()
    names = _author_names(rng, spec.n_authors, taken)
    pools = _value_pools(rng, spec.n_authors, taken)
    by_author = [_author_records(rng, name, pools, spec.qa_per_author) for name in names]
    q = spec.qa_per_author
    perturbed = [r for recs in by_author for r in recs]
    out: dict[str, list[dict]] = {"full": _plain(perturbed)}
    for pct in FORGET_PERCENTS:
        cut = (spec.n_authors - n_forget_authors(spec.n_authors, pct)) * q
        out[f"forget{pct:02d}"] = _plain(perturbed[cut:])
        out[f"retain{100 - pct}"] = _plain(perturbed[:cut])
        out[f"forget{pct:02d}_perturbed"] = perturbed[cut:]
    retain90 = perturbed[: (spec.n_authors - n_forget_authors(spec.n_authors, 10)) * q]
    n_retain_eval = min(len(out["forget10"]), len(retain90))
    out["retain_perturbed"] = [retain90[i] for i in sorted(rng.sample(range(len(retain90)), n_retain_eval))]
    real = _real_author_records(rng, spec.n_real_authors)
    world = _world_fact_records(rng, spec.n_world_facts)
    out["real_authors"] = _knowledge_plain(real)
    out["real_authors_perturbed"] = real
    out["world_facts"] = _knowledge_plain(world)
    out["world_facts_perturbed"] = world
    return {name: out[name] for name in CONFIGS}
