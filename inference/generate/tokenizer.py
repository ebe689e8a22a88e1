"""The byte-level BPE tokenizer: trained here from the shipped corpus, loaded from
`tokenizer.json`, with the chat template and incremental detokenization the server needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = Path(__file__).with_name("corpus.txt")

BOS, EOS, END = "<s>", "</s>", "<|end|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [BOS, EOS, *(f"<|{role}|>" for role in ROLES), END]

# The same template as CHAT_TEMPLATE_JINJA, for tools (vLLM, transformers) that read
# tokenizer_config.json; `render_chat` below must produce byte-identical prompts.
CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def render_chat(messages: list[tuple[str, str]], add_generation_prompt: bool = True) -> str:
    text = "".join(f"<|{role}|>\n{content}{END}\n" for role, content in messages)
    return text + "<|assistant|>\n" if add_generation_prompt else text


def train(vocab_size: int) -> Tokenizer:
    """Deterministic for a given corpus and size: BPE merges are chosen by count, ties broken
    by the pair itself, so every machine trains the same tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.read_text().splitlines(), trainer)
    return tokenizer


def tokenizer_config() -> dict[str, object]:
    """tokenizer_config.json, as transformers' PreTrainedTokenizerFast reads it."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 1 << 30,
        "chat_template": CHAT_TEMPLATE_JINJA,
    }


class TextTokenizer:
    """What the engine needs of a tokenizer: ids in, text out, the stop tokens."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self.eos_id = self._id(EOS)
        self.stop_ids = frozenset({self.eos_id, self._id(END)})
        self.vocab_size = tokenizer.get_vocab_size()
        # The longest token's byte length bounds how few tokens a text can become, so a prompt
        # that cannot fit the context is refused before it is tokenized at all.
        self.max_token_bytes = max(len(decoders.ByteLevel().decode([t])) for t in tokenizer.get_vocab())

    @classmethod
    def load(cls, path: Path) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def _id(self, token: str) -> int:
        found = self._tok.token_to_id(token)
        if found is None:
            raise ValueError(f"tokenizer has no {token!r} token")
        return int(found)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


@dataclass
class Detokenizer:
    """Turns a growing list of token ids into text deltas, holding back what may still change:
    a partial UTF-8 character (byte-level BPE splits them) and the tail that could be the start
    of a stop string, so the client never sees text that a stop string later takes back."""

    tokenizer: TextTokenizer
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0

    def add(self, token: int) -> tuple[str, bool]:
        """Appends a token; returns (text to send now, whether a stop string ended the text)."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        if self.stop:
            start = max(0, self.sent - max(map(len, self.stop)))
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                return self.flush(), True
        if self.text.endswith("\ufffd"):
            return "", False
        hold = max((len(s) - 1 for s in self.stop), default=0)
        end = max(self.sent, len(self.text) - hold)
        delta, self.sent = self.text[self.sent : end], end
        return delta, False

    def flush(self) -> str:
        """Everything not yet sent, at the end of the sequence; an unfinished UTF-8 character
        there can never be completed, so it is dropped (as vLLM does), not sent as U+FFFD."""
        if self.text.endswith("\ufffd"):
            self.text = self.text[:-1]
        delta, self.sent = self.text[self.sent :], max(self.sent, len(self.text))
        return delta
