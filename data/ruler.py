"""RULER's 13 synthetic tasks (NVIDIA/RULER, ``scripts/synthetic.yaml``), generated offline.

Six need no external text and follow RULER exactly (templates, answer prefixes, needle formats,
value types, counts, few-shot examples, tokens reserved for the answer): niah_single_1,
niah_multikey_2, niah_multikey_3, vt, cwe, fwe. Five use RULER's Paul Graham essays as haystack;
here the haystack is local prose (``data.prose``: your files, or the standard library's
docstrings). The two QA tasks use SQuAD and HotpotQA; here the documents are templated facts
about fictional towns and people (single-hop for qa_1, two-hop for qa_2), so that no model knows
the answer beforehand. Samples of these seven carry the label "RULER-offline".

``generate(task, length, tokenizer, seed, depth, split)`` returns one ``Sample`` whose prompt plus
the reserved answer tokens fit ``length`` tokens of ``tokenizer`` (the haystack sized by
``data.sample.fit_units``). ``depth`` (0..1) places the first gold needle (or gold document) at
that fraction of the haystack, at a line / sentence / document boundary; ``None`` draws positions
as RULER does (noise and needle haystacks: uniform over lines; essays: RULER's 40 depths).
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from data.prose import prose_sentences
from data.sample import LengthError, Sample, counter_for, fit_units, rng_key
from data.wordlists import ADJECTIVES, NOUNS, VERBS

# RULER's 40 insertion depths: np.round(np.linspace(0, 100, 40)).astype(int), as fractions.
DEPTHS = tuple(round(100 * i / 39) / 100 for i in range(40))

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."

# Templates and answer prefixes: RULER's scripts/data/synthetic/constants.py, verbatim.
TEMPLATES = {
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
        "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    ),
    "vt": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
        "assigned the value {query}, they are: ",
    ),
    "cwe": (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n{context}\n"
        "Question: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
    ),
    "fwe": (
        "Read the following coded text and track the frequency of each coded word. Find the three most "
        "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
        "the dots '....'. What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
    ),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
        "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
    ),
}
# RULER's tokens_to_generate per task family: kept free for the answer when sizing.
TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str  # niah | vt | cwe | fwe | qa
    haystack: str  # noise | needle | essay | words | coded | documents
    args: dict = field(default_factory=dict)
    offline: bool = False  # True: a local substitute for external text ("RULER-offline")
    metric: str = "string_match_all"


def _niah(name, haystack, k="words", v="numbers", nk=1, nv=1, nq=1):
    args = dict(type_needle_k=k, type_needle_v=v, num_needle_k=max(nk, nq), num_needle_v=nv, num_needle_q=nq)
    return TaskSpec(name, "niah", haystack, args, offline=haystack == "essay")


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _niah("niah_single_1", "noise"),
        _niah("niah_single_2", "essay"),
        _niah("niah_single_3", "essay", v="uuids"),
        _niah("niah_multikey_1", "essay", nk=4),
        _niah("niah_multikey_2", "needle"),
        _niah("niah_multikey_3", "needle", k="uuids", v="uuids"),
        _niah("niah_multivalue", "essay", nv=4),
        _niah("niah_multiquery", "essay", nq=4),
        TaskSpec("vt", "vt", "noise", dict(num_chains=1, num_hops=4)),
        TaskSpec("cwe", "cwe", "words", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
        TaskSpec("fwe", "fwe", "coded", dict(alpha=2.0, coded_wordlen=6)),
        TaskSpec("qa_1", "qa", "documents", dict(dataset="squad"), offline=True, metric="string_match_part"),
        TaskSpec("qa_2", "qa", "documents", dict(dataset="hotpotqa"), offline=True, metric="string_match_part"),
    ]
}


@dataclass
class _Draft:
    """One candidate sample for a haystack of ``units`` units."""

    input: str
    answer_prefix: str
    answers: list[str]
    target: str
    needle_depths: list[float] = field(default_factory=list)
    offline: bool = False
    metadata: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.input + self.answer_prefix


# ---------------------------------------------------------------------------------------------
# random values, RULER's kinds


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _word(rng: random.Random) -> str:
    # uniform over RULER's sorted adjective-noun list, without building its 6M entries
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


_RANDOM = {"numbers": _number, "words": _word, "uuids": _uuid}


def _insert(units: list[str], needles: list[tuple[int, str]]) -> tuple[list[str], list[int]]:
    """``units`` with each needle inserted before unit ``pos`` (pos in [0, len(units)]); needles at
    the same position keep their given order. Returns (joined list, unit position of each needle)."""
    order = sorted(range(len(needles)), key=lambda i: (needles[i][0], i))
    out: list[str] = []
    prev = 0
    for i in order:
        pos, text = needles[i]
        out += units[prev:pos]
        out.append(text)
        prev = pos
    out += units[prev:]
    return out, [needles[i][0] for i in range(len(needles))]


def _positions(rng: random.Random, n: int, k: int, depth: float | None, essay: bool) -> list[int]:
    """Unit positions of k needles in a haystack of n units. The first needle goes at ``depth``
    when given; otherwise (and for the others) RULER's draws: for essays ``sample(DEPTHS, k)``, for
    line haystacks ``sample(range(n), k)``."""
    if essay:
        pool = [d for d in DEPTHS if depth is None or d != depth]
        ds = sorted(rng.sample(pool, k if depth is None else k - 1))
        pos = [int(n * d) for d in ds]
    else:
        m = k if depth is None else k - 1
        pos = sorted(rng.sample(range(n), m)) if n >= m else sorted(rng.choices(range(n + 1), k=m))
    if depth is not None:
        pos = [int(n * depth)] + pos
    return pos


# ---------------------------------------------------------------------------------------------
# niah


def _niah_draft(spec: TaskSpec, key: str, n: int, depth: float | None, prose: tuple[str, ...]) -> _Draft:
    a = spec.args
    rng = random.Random(key)
    kinds_k, kind_v = a["type_needle_k"], a["type_needle_v"]
    keys, values, needles = [], [], []  # needles: (key index, value)
    for i in range(a["num_needle_k"]):
        keys.append(_RANDOM[kinds_k](rng))
        values.append([_RANDOM[kind_v](rng) for _ in range(a["num_needle_v"])])
        needles += [(i, v) for v in values[-1]]
    queried = rng.sample(range(a["num_needle_k"]), a["num_needle_q"])
    answers = [v for i in queried for v in values[i]]
    rng.shuffle(needles)
    # the first gold needle leads, so that ``depth`` places it
    first = next(j for j, (i, v) in enumerate(needles) if v == answers[0])
    needles.insert(0, needles.pop(first))
    texts = [NEEDLE.format(type_needle_v=kind_v, key=keys[i], value=v) for i, v in needles]

    hay = random.Random(key + "|haystack")
    if spec.haystack == "essay":
        start = hay.randrange(len(prose))
        units = [prose[(start + j) % len(prose)] for j in range(n)]
    elif spec.haystack == "noise":
        units = [NOISE] * n
    else:  # needle: every line a distractor needle; a key equal to a real one is drawn again
        taken = set(keys)
        units = []
        while len(units) < n:
            k = _RANDOM[kinds_k](hay)
            if k not in taken:
                units.append(NEEDLE.format(type_needle_v=kind_v, key=k, value=_RANDOM[kind_v](hay)))
    pos = _positions(rng, n, len(texts), depth, spec.haystack == "essay")
    joined, pos = _insert(units, list(zip(pos, texts)))
    context = (" " if spec.haystack == "essay" else "\n").join(joined)

    queries = [keys[i] for i in queried]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, prefix = TEMPLATES["niah"]
    type_v = kind_v
    if len(answers) == 1:  # RULER's singular rewrite of the template
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        type_v = kind_v[:-1]
    target = f" {answers[0]}." if len(answers) == 1 else " " + ", ".join(answers[:-1]) + f", and {answers[-1]}."
    return _Draft(
        template.format(type_needle_v=type_v, context=context, query=query),
        prefix.format(type_needle_v=type_v, query=query),
        answers,
        target,
        [p / max(n, 1) for p in pos],
        offline=spec.offline,
        metadata={"units": n, "needles": texts, "needle_units": pos, "gold": [v in answers for _, v in needles]},
    )


# ---------------------------------------------------------------------------------------------
# vt: variable tracking


def _vt_chain(rng: random.Random, hops: int, letters: int) -> tuple[list[str], list[str]]:
    names: list[str] = []
    while len(names) < hops + 1:
        v = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if v not in names:
            names.append(v)
    chain = [f"VAR {names[0]} = {rng.randint(10000, 99999)}"]
    chain += [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]  # RULER's trailing space
    return names, chain


def _vt_text(rng: random.Random, n: int, hops: int, letters: int, depth: float | None) -> tuple[str, list, list]:
    names, chain = _vt_chain(rng, hops, letters)
    if depth is None:
        pos = (
            sorted(rng.sample(range(n), len(chain)))
            if n >= len(chain)
            else sorted(rng.choices(range(n + 1), k=len(chain)))
        )
    else:
        p0 = int(n * depth)
        pos = [p0] + sorted(rng.choices(range(p0, n + 1), k=len(chain) - 1))
    joined, pos = _insert([NOISE] * n, list(zip(pos, chain)))
    context = "\n".join(joined).replace(". \n", ".\n")
    template, prefix = TEMPLATES["vt"]
    value = chain[0].split("=")[-1].strip()
    text = template.format(context=context, query=value) + prefix.format(num_v=hops + 1, query=value)
    return text, names, pos


def _vt_draft(spec: TaskSpec, key: str, n: int, depth: float | None, icl: str) -> _Draft:
    hops = spec.args["num_hops"]
    text, names, pos = _vt_text(random.Random(key), n, hops, 5, depth)
    cut = text.rindex(TEMPLATES["vt"][1][:10])
    return _Draft(
        icl + "\n" + text[:cut],  # RULER puts the one-shot example before the task
        text[cut:],
        names,
        " ".join(names),
        [p / max(n, 1) for p in pos],
        metadata={"units": n, "needle_units": pos},
    )


def _vt_icl(key: str, count, length: int, hops: int) -> str:
    """RULER's one-shot example: the same task with 3-letter names and its answer, its noise
    sized to at most 500 tokens (``length // 4`` below 2K, where 500 would crowd out the task)."""
    rng_key_icl = key + "|icl"

    def build(m: int) -> str:
        text, names, _ = _vt_text(random.Random(rng_key_icl), m, hops, 3, None)
        return text + " " + " ".join(names)

    try:
        _, text, _ = fit_units(build, count, min(500, length // 4), n_min=0, n_max=200)
    except LengthError:  # a short length or a byte-level tokenizer: the example without noise
        text = build(0)
    return text + "\n"


# ---------------------------------------------------------------------------------------------
# cwe: common words extraction


_CWE_WORDS = sorted(set(NOUNS + ADJECTIVES + VERBS))
_SIMPLE_NOUNS = [w for w in NOUNS if w.isalpha() and w.islower()]


def _cwe_words(rng: random.Random, num: int) -> tuple[list[str], bool]:
    """``num`` distinct words: RULER's wonderwords nouns + adjectives + verbs. Past their ~8.3K,
    RULER switches to a 466K-word English list that is not available offline; the substitute
    extends with noun-noun compounds ("harborlantern"), and the sample is labelled RULER-offline."""
    if num <= len(_CWE_WORDS):
        return rng.sample(_CWE_WORDS, num), False
    words = rng.sample(_CWE_WORDS, len(_CWE_WORDS))
    seen = set(words)
    while len(words) < num:
        w = rng.choice(_SIMPLE_NOUNS) + rng.choice(_SIMPLE_NOUNS)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words, True


def _cwe_example(rng: random.Random, num_words: int, common_repeats: int, uncommon_repeats: int, num_cw: int):
    words, extended = _cwe_words(rng, num_words)
    common, uncommon = words[:num_cw], words[num_cw:]
    word_list = common * common_repeats + uncommon * uncommon_repeats
    rng.shuffle(word_list)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(word_list)), common, extended


def _cwe_draft(spec: TaskSpec, key: str, n: int, length: int) -> _Draft:
    a = spec.args
    rng = random.Random(key)
    template, prefix = TEMPLATES["cwe"]
    # RULER: below 4K tokens, a smaller example and fewer repeats
    shot, main = ((20, 3, 1), (6, 1)) if length < 4096 else ((40, 10, 3), (a["freq_cw"], a["freq_ucw"]))
    ctx, ans, _ = _cwe_example(rng, *shot, a["num_cw"])
    few_shot = template.format(context=ctx) + prefix + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ans))
    ctx, common, extended = _cwe_example(rng, n, *main, a["num_cw"])
    return _Draft(
        few_shot + "\n" + template.format(context=ctx),
        prefix,
        common,
        " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(common)),
        offline=extended,
        metadata={"units": n, "repeats": list(main)},
    )


# ---------------------------------------------------------------------------------------------
# fwe: frequent words extraction


def _zeta(alpha: float) -> float:
    """Riemann zeta for alpha > 1 (scipy's ``zeta(alpha)`` without scipy): a partial sum plus the
    Euler-Maclaurin tail, exact to ~1e-12 for alpha >= 1.5."""
    m = 1000
    return sum(k**-alpha for k in range(1, m)) + m ** (1 - alpha) / (alpha - 1) + 0.5 * m**-alpha


def _fwe_draft(spec: TaskSpec, key: str, n: int, length: int, reserve: int) -> _Draft:
    a = spec.args
    rng = random.Random(key)
    vocab_size = max((length - reserve) // 50, 8)  # RULER: (max_seq_length - tokens_to_generate) // 50
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=a["coded_wordlen"])))
    words = sorted(vocab)
    rng.shuffle(words)
    words[0] = "..."  # RULER: the top-ranked word is noise
    z = _zeta(a["alpha"])
    counts = [int(n * k ** -a["alpha"] / z) for k in range(1, len(words) + 1)]
    sampled = [w for w, c in zip(words, counts) for _ in range(c)]
    rng.shuffle(sampled)
    template, prefix = TEMPLATES["fwe"]
    return _Draft(
        template.format(context=" ".join(sampled)),
        prefix,
        words[1:4],
        " " + " ".join(words[1:4]),
        metadata={"units": n, "counts": counts[:5]},
    )


# ---------------------------------------------------------------------------------------------
# qa: templated fictional-fact documents (substitutes for SQuAD and HotpotQA)

_ONSETS = "b br d dr f g gr h k kr l m n p pr r s st t tr v z sh th w".split()
_VOWELS = "a e i o u ai ou ei ia".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "nd", "rk", "st"]
_PROFESSIONS = "weaver potter surveyor glassblower cartographer botanist clockmaker architect sculptor".split()
_PRIZES = "Lantern Harrow Meridian Juniper Corvid Saltmarsh Beacon Thistle".split()


def _name(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).title()


class _World:
    """Fictional towns and people with unique names, drawn in order from one generator."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def name(self, syllables: int) -> str:
        while True:
            s = _name(self.rng, syllables)
            if s not in self.used:
                self.used.add(s)
                return s

    def town(self) -> dict:
        r = self.rng
        return dict(
            town=self.name(3),
            river=self.name(2),
            country=self.name(2),
            year=str(r.randint(1200, 1899)),
            founder=f"{self.name(2)} {self.name(2)}",
            profession=r.choice(_PROFESSIONS),
            product=r.choice(_SIMPLE_NOUNS),
            pop=f"{r.randint(1000, 99999):,}",
        )

    def person(self, town: str | None = None) -> dict:
        r = self.rng
        return dict(
            person=f"{self.name(2)} {self.name(3)}",
            profession=r.choice(_PROFESSIONS),
            town=town or self.name(3),
            book=f"The {r.choice(ADJECTIVES).title()} {r.choice(_SIMPLE_NOUNS).title()}",
            prize=f"{r.choice(_PRIZES)} Prize",
            year=str(r.randint(1900, 2019)),
            school=f"{self.name(2)} Academy",
        )


def _town_doc(t: dict) -> str:
    return (
        f"{t['town']} is a small town on the {t['river']} River, in the country of {t['country']}. It was founded "
        f"in {t['year']} by the {t['profession']} {t['founder']}. The town is best known for its {t['product']}, "
        f"which is sold at a fair every spring. At the last census, {t['town']} had {t['pop']} inhabitants."
    )


def _person_doc(p: dict) -> str:
    return (
        f"{p['person']} is a {p['profession']} who was born in {p['town']}. After studying at the {p['school']}, "
        f'{p["person"]} wrote a book titled "{p["book"]}". In {p["year"]}, {p["person"]} received the '
        f"{p['prize']} for this work."
    )


def _qa1_question(rng: random.Random, kind: str, e: dict) -> tuple[str, list[str]]:
    if kind == "town":
        q = rng.choice(
            [
                (f"Who founded {e['town']}?", [e["founder"]]),
                (f"In which year was {e['town']} founded?", [e["year"]]),
                (f"On which river does {e['town']} lie?", [e["river"]]),
                (f"What is {e['town']} best known for?", [e["product"]]),
                (
                    f"How many inhabitants did {e['town']} have at the last census?",
                    [e["pop"], e["pop"].replace(",", "")],
                ),
            ]
        )
    else:
        q = rng.choice(
            [
                (f"Which book did {e['person']} write?", [e["book"]]),
                (f"Where did {e['person']} study?", [e["school"]]),
                (f"In which year did {e['person']} receive the {e['prize']}?", [e["year"]]),
                (f"In which town was {e['person']} born?", [e["town"]]),
            ]
        )
    return q


def _qa_draft(spec: TaskSpec, key: str, n: int, depth: float | None) -> _Draft:
    rng = random.Random(key)
    world = _World(random.Random(key + "|world"))
    if spec.args["dataset"] == "squad":  # one paragraph holds the answer
        kind = rng.choice(["town", "person"])
        e = world.town() if kind == "town" else world.person()
        query, answers = _qa1_question(rng, kind, e)
        gold = [_town_doc(e) if kind == "town" else _person_doc(e)]
    else:  # hotpotqa: two titled paragraphs, joined through the town
        t = world.town()
        p = world.person(town=t["town"])
        query, answers = rng.choice(
            [
                (f"In which country was the {p['profession']} {p['person']} born?", [t["country"]]),
                (f"Which river flows through the town where {p['person']} was born?", [t["river"]]),
                (f'Who founded the town where the author of "{p["book"]}" was born?', [t["founder"]]),
            ]
        )
        gold = [f"{p['person']}\n{_person_doc(p)}", f"{t['town']}\n{_town_doc(t)}"]
    hotpot = spec.args["dataset"] == "hotpotqa"
    units = []
    for j in range(n):  # distractors: the same kinds of document about other towns and people
        if j % 2 == 0:
            e = world.town()
            units.append(f"{e['town']}\n{_town_doc(e)}" if hotpot else _town_doc(e))
        else:
            e = world.person()
            units.append(f"{e['person']}\n{_person_doc(e)}" if hotpot else _person_doc(e))
    pos = [int(n * depth) if depth is not None else rng.randint(0, n)]
    pos += [rng.randint(0, n) for _ in gold[1:]]
    joined, pos = _insert(units, list(zip(pos, gold)))
    context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(joined))
    template, prefix = TEMPLATES["qa"]
    return _Draft(
        template.format(context=context, query=query),
        prefix,
        answers,
        f" {answers[0]}",
        [p / max(n, 1) for p in pos],
        offline=True,
        metadata={"units": n, "needle_units": pos, "needles": gold, "question": query},
    )


# ---------------------------------------------------------------------------------------------


def generate(
    task: str,
    length: int,
    tokenizer,
    seed: int = 0,
    depth: float | None = None,
    split: str = "eval",
    *,
    tokens_to_generate: int | None = None,
    template_tokens: int = 0,
    prose_files: list[str] | None = None,
) -> Sample:
    """One sample of ``task`` that fits ``length`` tokens of ``tokenizer``.

    Budget: tokens(input + answer_prefix) + max(tokens_to_generate, tokens(target)) +
    template_tokens <= length, where ``tokens_to_generate`` defaults to RULER's value for the task
    (128 niah, 30 vt, 120 cwe, 50 fwe, 32 qa) and ``template_tokens`` is what a chat template will
    add around the prompt (RULER's ``model_template_token``). ``depth`` in [0, 1] places the first
    gold needle; cwe and fwe have none and take ``depth=None``.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: use one of {sorted(TASKS)}")
    spec = TASKS[task]
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth}: use a fraction in [0, 1] or None")
    if depth is not None and spec.family in ("cwe", "fwe"):
        raise ValueError(f"task {task} has no needle: use depth=None")
    count = counter_for(tokenizer)
    key = rng_key(task, length, depth, split, seed)
    gen = TOKENS_TO_GENERATE[spec.family] if tokens_to_generate is None else tokens_to_generate
    prose = prose_sentences(prose_files) if spec.haystack == "essay" else ()
    icl = _vt_icl(key, count, length, spec.args["num_hops"]) if spec.family == "vt" else ""

    def draft(n: int) -> _Draft:
        if spec.family == "niah":
            return _niah_draft(spec, key, n, depth, prose)
        if spec.family == "vt":
            return _vt_draft(spec, key, n, depth, icl)
        if spec.family == "cwe":
            return _cwe_draft(spec, key, n, length)
        if spec.family == "fwe":
            return _fwe_draft(spec, key, n, length, gen)
        return _qa_draft(spec, key, n, depth)

    def answer_tokens(d: _Draft) -> int:
        return max(gen, count(d.target), count(" ".join(d.answers)))

    drafts: dict[int, _Draft] = {}

    def build(n: int) -> str:
        drafts[n] = d = draft(n)
        return d.prompt

    # The answer hardly depends on the haystack size (cwe's common words do): size with the
    # answer of the smallest haystack, and again if the final answer turns out longer.
    reserve = answer_tokens(draft(_N_MIN[spec.family]))
    for _ in range(4):
        try:
            n, _, ntok = fit_units(build, count, length - reserve - template_tokens, n_min=_N_MIN[spec.family])
        except LengthError as e:
            raise LengthError(f"{task} at length={length}: {e}") from None
        d = drafts[n]
        if answer_tokens(d) <= reserve:
            break
        reserve = answer_tokens(d) + 8
    else:
        raise LengthError(f"{task} at length={length}: the answer keeps outgrowing the reserved tokens")
    return Sample(
        task=task,
        length=length,
        seed=seed,
        split=split,
        input=d.input,
        answer_prefix=d.answer_prefix,
        answers=d.answers,
        target=d.target,
        metric=spec.metric,
        label="RULER-offline" if spec.offline or d.offline else "RULER",
        depth=depth,
        needle_depths=d.needle_depths,
        num_tokens=ntok,
        reserved_tokens=reserve,
        metadata={
            "haystack": spec.haystack,
            "tokens_to_generate": gen,
            "template_tokens": template_tokens,
            **d.metadata,
        },
    )


# fewest haystack units per family: fwe needs ranks 1..5 apart (counts n/zeta(2) * 1/k^2)
_N_MIN = {"niah": 0, "vt": 0, "cwe": 10, "fwe": 100, "qa": 0}


def generate_many(
    task: str, length: int, tokenizer, seeds: Iterable[int], depth: float | None = None, split: str = "eval", **kw
) -> Iterator[Sample]:
    for seed in seeds:
        yield generate(task, length, tokenizer, seed, depth, split, **kw)


def depth_sweep(task: str, length: int, tokenizer, per_depth: int = 1, split: str = "eval", **kw) -> Iterator[Sample]:
    """``per_depth`` samples at each of RULER's 40 depths (seeds numbered across the sweep)."""
    for i, d in enumerate(DEPTHS):
        for j in range(per_depth):
            yield generate(task, length, tokenizer, i * per_depth + j, d, split, **kw)
