"""mrcr_synth: a multi-turn task in the manner of OpenAI's MRCR (multi-round co-reference).

A long chat of requests "Write a {form} about {topic}." with synthetic replies (sentences of the
built-in prose, ``data.prose``). One request is asked 2, 4 or 8 times, each time with a different
reply; near-miss distractors ask for the same form about another topic or another form about the
same topic. The last turn asks to prepend a random 10-character prefix to the k-th reply of that
request. Score (``data.scoring.mrcr_score``): 0 when the response does not start with the prefix,
else the difflib ratio of the rest against the k-th reply.

The chat is rendered with the tokenizer's own chat template when it has one, else as plain
"User: ... / Assistant: ..." turns; the number of filler turns is sized like RULER's haystacks.
"""

from __future__ import annotations

import random
import string

from data.prose import prose_sentences
from data.sample import LengthError, Sample, counter_for, fit_units, rng_key

FORMS = (
    "poem",
    "short story",
    "riddle",
    "haiku",
    "limerick",
    "letter",
    "speech",
    "blog post",
    "song",
    "fable",
    "sonnet",
    "news report",
    "dialogue",
    "recipe",
    "diary entry",
)
TOPICS = (
    "tapirs lighthouses glaciers beekeeping lanterns volcanoes orchards submarines owls bridges libraries "
    "comets tides kites harbors deserts clocks ferns marathons violins caves falcons windmills monsoons "
    "bakeries telescopes canyons otters railways chess meadows icebergs jellyfish pottery fireflies "
    "printing presses sandcastles blacksmiths snowstorms mushrooms typewriters ravens coral reefs"
).split()
NEEDLE_COUNTS = (2, 4, 8)
PREFIX_CHARS = string.ascii_letters + string.digits


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _reply(rng: random.Random, prose: tuple[str, ...], form: str, topic: str) -> str:
    start = rng.randrange(len(prose))
    lines = [prose[(start + j) % len(prose)] for j in range(rng.randint(2, 5))]
    sep = "\n" if form in ("poem", "haiku", "limerick", "song", "sonnet") else " "
    return f"{form.title()} about {topic}: {rng.choice(prose)[:-1]}\n\n" + sep.join(lines)


def render_chat(messages: list[dict], tokenizer) -> tuple[str, str]:
    """(prompt, answer_prefix): the chat through the tokenizer's chat template with the generation
    prompt, or plain turns ending in "Assistant:" (the model then writes " <prefix>...")."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), ""
    turns = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + "\n\n", "Assistant:"


def generate(
    length: int,
    tokenizer,
    seed: int = 0,
    depth: float | None = None,
    split: str = "eval",
    *,
    needles: int = 2,
    template_tokens: int = 0,
    prose_files: list[str] | None = None,
    keep_messages: bool = False,
) -> Sample:
    """One mrcr_synth sample with ``needles`` (2, 4 or 8) identical requests that fits ``length``
    tokens of ``tokenizer`` with its answer. ``depth`` places the asked-for instance at that
    fraction of the conversation (None: uniform). ``keep_messages`` adds the chat as a message
    list to the metadata (to render with another template)."""
    if needles not in NEEDLE_COUNTS:
        raise ValueError(f"needles={needles}: use one of {NEEDLE_COUNTS}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth}: use a fraction in [0, 1] or None")
    task = f"mrcr_{needles}"
    key = rng_key(task, length, depth, split, seed)
    count = counter_for(tokenizer)
    prose = prose_sentences(prose_files)

    rng = random.Random(key)
    form, topic = rng.choice(FORMS), rng.choice(TOPICS)
    prefix = "".join(rng.choices(PREFIX_CHARS, k=10))
    request = f"Write a {form} about {topic}."
    replies = [_reply(rng, prose, form, topic) for _ in range(needles)]
    # near misses: the same form about another topic, another form about the same topic
    other_topics = [t for t in TOPICS if t != topic]
    other_forms = [f for f in FORMS if f != form]
    near = [(form, rng.choice(other_topics)) for _ in range(needles)]
    near += [(rng.choice(other_forms), topic) for _ in range(needles)]
    near_turns = [(f"Write a {f} about {t}.", _reply(rng, prose, f, t)) for f, t in near]
    u_target = rng.random()  # which instance is asked for, when depth is None

    def turns(n: int) -> tuple[list[tuple[str, str]], int, list[int]]:
        """n filler turns with the needle and near-miss turns inserted; the asked-for instance is
        the one at ``depth``. Returns (turns, k, turn index and filler slot of each instance)."""
        r = random.Random(key + f"|n={n}")
        hay = random.Random(key + "|filler")
        filler = []
        while len(filler) < n:
            f, t = hay.choice(FORMS), hay.choice(TOPICS)
            if f != form and t != topic:
                filler.append((f"Write a {f} about {t}.", _reply(hay, prose, f, t)))
        slots = sorted(r.randint(0, n) for _ in range(needles + len(near_turns)))
        r.shuffle(slots)
        needle_slots = sorted(slots[:needles])
        k = min(int(u_target * needles), needles - 1) if depth is None else 0
        if depth is not None:  # the asked-for instance at depth, the others around it in order
            needle_slots = sorted(needle_slots[1:] + [int(n * depth)])
            k = needle_slots.index(int(n * depth))
        inserts = [(s, (request, replies[i])) for i, s in enumerate(needle_slots)]
        inserts += [(s, t) for s, t in zip(slots[needles:], near_turns)]
        out, j = [], 0
        where = []
        for s, turn in sorted(inserts, key=lambda x: x[0]):
            out += filler[j:s]
            j = s
            if turn[0] == request:
                where.append(len(out))
            out.append(turn)
        out += filler[j:]
        return out, k, where, needle_slots

    def build(n: int) -> tuple[str, str, list[dict], int, list[int], list[int]]:
        chat, k, where, slots = turns(n)
        messages = []
        for q, a in chat:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        ask = (
            f"Prepend {prefix} to the {_ordinal(k + 1)} (1 indexed) {form} about {topic}. "
            "Do not include any other text in your response."
        )
        messages.append({"role": "user", "content": ask})
        text, answer_prefix = render_chat(messages, tokenizer)
        return text, answer_prefix, messages, k, where, slots

    # the answer is one of the replies: reserve for the longest
    reserve = max(count(prefix + r) for r in replies) + 8
    built: dict[int, tuple] = {}

    def prompt(n: int) -> str:
        built[n] = b = build(n)
        return b[0] + b[1]

    try:
        n, _, ntok = fit_units(prompt, count, length - reserve - template_tokens, n_min=0)
    except LengthError as e:
        raise LengthError(f"{task} at length={length}: {e}") from None
    text, answer_prefix, messages, k, where, slots = built[n]
    answer = prefix + replies[k]
    total_turns = len(messages) // 2
    meta = {
        "prefix": prefix,
        "request": request,
        "k": k + 1,
        "needle_turns": where,
        "turns": total_turns,
        "filler_turns": n,
    }
    if keep_messages:
        meta["messages"] = messages
    return Sample(
        task=task,
        length=length,
        seed=seed,
        split=split,
        input=text,
        answer_prefix=answer_prefix,
        answers=[answer],
        target=(" " if answer_prefix else "") + answer,
        metric="mrcr",
        label="MRCR-synth",
        depth=depth,
        # in filler turns, as ``depth``: the asked-for instance first, then the others in order
        needle_depths=[slots[i] / max(n, 1) for i in [k] + [i for i in range(needles) if i != k]],
        num_tokens=ntok,
        reserved_tokens=reserve,
        metadata=meta,
    )
