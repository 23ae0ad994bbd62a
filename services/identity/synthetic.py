"""Synthetic people for measuring the identity service: a deterministic population, and
a labelled set of duplicates (typos, swapped names, alias use, mistyped dates) and twins
for measuring match precision and recall. No real person's data is used."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from services.identity.domain import Name, Sex
from services.identity.matching import digits

GIVEN_FEMALE = [
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Mia",
    "Ivy",
    "Lily",
    "Isabella",
    "Rosie",
    "Sophia",
    "Grace",
    "Willow",
    "Freya",
    "Florence",
    "Emilia",
    "Ella",
    "Poppy",
    "Evie",
    "Elsie",
    "Charlotte",
    "Evelyn",
    "Sienna",
    "Sofia",
    "Daisy",
    "Phoebe",
    "Sophie",
    "Alice",
    "Harper",
    "Matilda",
    "Ruby",
    "Emily",
    "Maya",
    "Millie",
    "Isabelle",
    "Esme",
    "Jessica",
    "Hannah",
    "Zara",
    "Bethany",
    "Chloe",
    "Megan",
    "Lauren",
    "Rebecca",
    "Natalie",
    "Joanne",
    "Kerry",
    "Donna",
    "Tracey",
    "Siobhan",
    "Aisha",
    "Fatima",
    "Zainab",
    "Priya",
    "Anjali",
    "Agnieszka",
    "Katarzyna",
    "Małgorzata",
    "Zoë",
    "Renée",
    "Niamh",
    "Saoirse",
    "Aoife",
    "Bronwen",
    "Ffion",
]
GIVEN_MALE = [
    "Muhammad",
    "Noah",
    "Oliver",
    "George",
    "Leo",
    "Arthur",
    "Oscar",
    "Theodore",
    "Freddie",
    "Archie",
    "Henry",
    "Alfie",
    "Charlie",
    "Jack",
    "Finley",
    "Luca",
    "Jacob",
    "Teddy",
    "Thomas",
    "Isaac",
    "Tommy",
    "Edward",
    "James",
    "William",
    "Joshua",
    "Daniel",
    "Ryan",
    "Liam",
    "Connor",
    "Callum",
    "Kieran",
    "Dean",
    "Darren",
    "Lee",
    "Wayne",
    "Gary",
    "Paul",
    "Mark",
    "Stuart",
    "Gareth",
    "Rhys",
    "Dylan",
    "Owain",
    "Ibrahim",
    "Yusuf",
    "Omar",
    "Hassan",
    "Arjun",
    "Rohan",
    "Piotr",
    "Tomasz",
    "Krzysztof",
    "Seán",
    "Ciarán",
    "Pádraig",
    "Dmitri",
    "Jean-Luc",
    "Ahmed",
    "Kwame",
    "Kofi",
    "Chinedu",
    "Emeka",
    "Tariq",
    "Bilal",
]
FAMILY = [
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Williams",
    "Wilson",
    "Johnson",
    "Davies",
    "Robinson",
    "Wright",
    "Thompson",
    "Evans",
    "Walker",
    "White",
    "Roberts",
    "Green",
    "Hall",
    "Wood",
    "Jackson",
    "Clarke",
    "Patel",
    "Khan",
    "Lewis",
    "James",
    "Phillips",
    "Mason",
    "Mitchell",
    "Rose",
    "Davis",
    "Rodriguez",
    "Cox",
    "Alexander",
    "Morden",
    "Harrison",
    "Ward",
    "Turner",
    "Morgan",
    "Hughes",
    "Edwards",
    "Hill",
    "Moore",
    "Clark",
    "Harris",
    "Cooper",
    "King",
    "Lee",
    "Martin",
    "Baker",
    "Young",
    "Allen",
    "Scott",
    "Anderson",
    "Kowalski",
    "Nowak",
    "Wiśniewski",
    "Ahmed",
    "Ali",
    "Hussain",
    "Begum",
    "Rahman",
    "Singh",
    "Kaur",
    "Sharma",
    "O'Brien",
    "O'Connor",
    "McDonald",
    "MacLeod",
    "Murphy",
    "Kelly",
    "Byrne",
    "Walsh",
    "Ryan",
    "Doherty",
    "Okafor",
    "Mensah",
    "Adeyemi",
    "Osei",
    "Nguyen",
    "Chen",
    "Wang",
    "Li",
    "Zhang",
    "Ivanov",
    "Petrov",
    "Novak",
    "Popescu",
    "Silva",
    "Santos",
    "Costa",
    "Ferreira",
    "Rossi",
    "Russo",
    "Ferrari",
    "Müller",
    "Schmidt",
    "Fischer",
    "Weber",
    "Dubois",
    "Lefèvre",
    "Moreau",
    "Fontaine",
    "Ashworth",
    "Pemberton",
    "Thistlewood",
    "Blackwood",
    "Fairweather",
    "Hawthorne",
    "Whitlock",
    "Oakley",
    "Penrose",
    "Sutcliffe",
    "Ramsbottom",
    "Higginbottom",
    "Featherstone",
    "Winterbottom",
    "Longbottom",
    "Shufflebotham",
]


def _random_name(rng: random.Random, sex: Sex) -> Name:
    pool = GIVEN_FEMALE if sex is Sex.FEMALE else GIVEN_MALE
    given = rng.choice(pool)
    if rng.random() < 0.4:
        given = f"{given} {rng.choice(pool)}"
    family = rng.choice(FAMILY)
    if rng.random() < 0.05:
        family = f"{family}-{rng.choice(FAMILY)}"
    return Name(given, family)


def _random_dob(rng: random.Random) -> date:
    return date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 66))


@dataclass
class SyntheticPerson:
    key: int
    name: Name
    date_of_birth: date
    sex: Sex
    aliases: list[Name] = field(default_factory=list)


def population(count: int, *, seed: int = 1) -> list[SyntheticPerson]:
    rng = random.Random(seed)
    people = []
    for key in range(count):
        sex = Sex.FEMALE if rng.random() < 0.5 else Sex.MALE
        people.append(SyntheticPerson(key, _random_name(rng, sex), _random_dob(rng), sex))
    return people


def typo(rng: random.Random, word: str) -> str:
    letters = list(word)
    if len(letters) < 4:
        return word + rng.choice("aeiou")
    i = rng.randrange(1, len(letters) - 1)
    if rng.random() < 0.5:
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
    else:
        letters[i] = rng.choice("aeioulnrst")
    typo = "".join(letters)
    return typo if typo != word else word + "e"


def _transpose(rng: random.Random, dob: date) -> date:
    if dob.day <= 12 and dob.day != dob.month:
        return date(dob.year, dob.day, dob.month)
    text = digits(dob)
    for i in rng.sample(range(2, 7), 5):  # not the century: nobody types 9143 for 1943
        swapped = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        try:
            candidate = date(int(swapped[:4]), int(swapped[4:6]), int(swapped[6:]))
        except ValueError:
            continue
        if candidate != dob and _plausible(candidate):
            return candidate
    return dob + timedelta(days=1)


def _one_digit(rng: random.Random, dob: date) -> date:
    text = digits(dob)
    for _ in range(50):
        i = rng.randrange(2, 8)
        digit = rng.choice("0123456789")
        changed = text[:i] + digit + text[i + 1 :]
        try:
            candidate = date(int(changed[:4]), int(changed[4:6]), int(changed[6:]))
        except ValueError:
            continue
        if candidate != dob and _plausible(candidate):
            return candidate
    return dob + timedelta(days=1)


def _plausible(dob: date) -> bool:
    return date(1900, 1, 1) <= dob <= date(2010, 12, 31)


@dataclass
class LabelledSet:
    """Records to register, and which pairs of them (by index) are the same person."""

    records: list[SyntheticPerson]
    duplicate_pairs: set[frozenset[int]]
    twin_pairs: set[frozenset[int]]
    kinds: dict[frozenset[int], str]


def labelled_set(originals: int, *, seed: int = 7) -> LabelledSet:
    """`originals` people; about a third get a duplicate record with one kind of error,
    and one in ten gets a twin (same family name and birth date, another first name)."""
    rng = random.Random(seed)
    records = population(originals, seed=seed)
    duplicates: set[frozenset[int]] = set()
    twins: set[frozenset[int]] = set()
    kinds: dict[frozenset[int], str] = {}
    kinds_of_error = (
        "family typo",
        "given typo",
        "swapped names",
        "alias",
        "transposed date",
        "date typo",
    )
    for original in list(records):
        roll = rng.random()
        if roll < 0.35:
            kind = rng.choice(kinds_of_error)
            given, family, dob = (
                original.name.given_names,
                original.name.family_name,
                original.date_of_birth,
            )
            if kind == "family typo":
                family = typo(rng, family)
            elif kind == "given typo":
                first, *rest = given.split(" ")
                given = " ".join([typo(rng, first), *rest])
            elif kind == "swapped names":
                given, family = family, given.split(" ")[0]
            elif kind == "alias":
                maiden = Name(original.name.given_names, rng.choice(FAMILY))
                original.aliases.append(maiden)
                given, family = maiden.given_names, maiden.family_name
            elif kind == "transposed date":
                dob = _transpose(rng, dob)
            else:
                dob = _one_digit(rng, dob)
            copy = SyntheticPerson(len(records), Name(given, family), dob, original.sex)
            records.append(copy)
            pair = frozenset({original.key, copy.key})
            duplicates.add(pair)
            kinds[pair] = kind
        elif roll < 0.45:
            pool = GIVEN_FEMALE if original.sex is Sex.FEMALE else GIVEN_MALE
            first = original.name.given_names.split(" ")[0]
            other = rng.choice([g for g in pool if g != first])
            twin = SyntheticPerson(
                len(records),
                Name(other, original.name.family_name),
                original.date_of_birth,
                original.sex,
            )
            records.append(twin)
            pair = frozenset({original.key, twin.key})
            twins.add(pair)
            kinds[pair] = "twin"
    return LabelledSet(records, duplicates, twins, kinds)


@dataclass
class Quality:
    precision: float
    recall: float
    true_positives: int
    false_positives: list[tuple[frozenset[int], str]]
    missed: list[tuple[frozenset[int], str]]


async def measure_quality(
    app, labelled: LabelledSet, person_ids: dict[int, object], *, threshold: float
) -> Quality:
    """Asks ListPossibleDuplicates for every record and compares with the labels.
    `app` is an IdentityApplication; `person_ids` maps record keys to person ids."""
    keys = {person_id: key for key, person_id in person_ids.items()}
    predicted: set[frozenset[int]] = set()
    for key, person_id in person_ids.items():
        found = await app.list_possible_duplicates(person_id, threshold=threshold, limit=20)
        for candidate in found.candidates:
            predicted.add(frozenset({key, keys[candidate.person_id]}))
    true_positives = predicted & labelled.duplicate_pairs
    false_positives = predicted - labelled.duplicate_pairs
    missed = labelled.duplicate_pairs - predicted
    return Quality(
        precision=len(true_positives) / len(predicted) if predicted else 1.0,
        recall=len(true_positives) / len(labelled.duplicate_pairs)
        if labelled.duplicate_pairs
        else 1.0,
        true_positives=len(true_positives),
        false_positives=sorted(
            ((p, labelled.kinds.get(p, "unrelated")) for p in false_positives), key=str
        ),
        missed=sorted(((p, labelled.kinds[p]) for p in missed), key=str),
    )
