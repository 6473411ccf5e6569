"""GPT-2 style byte-level BPE tokenizer built from GGUF metadata, with ChatML chat template and streaming decode."""

from __future__ import annotations

import codecs
from functools import lru_cache
from typing import Any

import regex

# GPT-2 pre-tokenizer split (what transformers' GGUF loader uses for SmolLM2's byte-level vocabulary).
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CONTROL = 3  # llama.cpp token_type for control tokens such as <|im_start|>
USER_DEFINED = 4

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Tokenizer:
    """Byte-level BPE over a GGUF vocabulary; control tokens written in text are matched whole."""

    def __init__(self, tokens: list[str], merges: list[str], token_type: list[int] | None = None,
                 bos_token_id: int | None = None, eos_token_id: int | None = None,
                 chat_template: str | None = None, add_bos_token: bool = False) -> None:
        self.tokens = list(tokens)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges or [])}
        types = list(token_type) if token_type is not None else [1] * len(self.tokens)
        self.special_ids = frozenset(i for i, t in enumerate(types) if t == CONTROL)
        whole = [self.tokens[i] for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)]
        self._special_re = (
            regex.compile("(" + "|".join(regex.escape(s) for s in sorted(whole, key=len, reverse=True)) + ")")
            if whole else None
        )
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.add_bos_token = add_bos_token
        self.chat_template = chat_template or CHATML_TEMPLATE
        self._split = regex.compile(GPT2_SPLIT)
        self._b2u = bytes_to_unicode()
        self._u2b = {c: b for b, c in self._b2u.items()}
        self._token_bytes: list[bytes] = [self._to_bytes(t) for t in self.tokens]
        # bytes of the longest token: a text of n characters has at least n / this many tokens
        self.max_token_bytes = max((len(b) for b in self._token_bytes), default=1)
        self._bpe_cache: dict[str, list[int]] = {}
        self._template: Any = None

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> Tokenizer:
        """Build from the `tokenizer.ggml.*` fields (keys without the prefix) plus `chat_template`."""
        if data.get("model") not in (None, "gpt2"):
            raise ValueError(f"unsupported tokenizer model {data.get('model')!r}: only byte-level BPE ('gpt2') is")
        return cls(data["tokens"], data.get("merges") or [], data.get("token_type"), data.get("bos_token_id"),
                   data.get("eos_token_id"), data.get("chat_template"), bool(data.get("add_bos_token")))

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.tokens)

    def _to_bytes(self, token: str) -> bytes:
        if all(c in self._u2b for c in token):
            return bytes(self._u2b[c] for c in token)
        return token.encode("utf-8")  # control tokens like <|im_end|> are stored as plain text

    def _bpe(self, word: str) -> list[int]:
        """Merge one pre-token (already in the byte alphabet) by rank; cached because words repeat."""
        hit = self._bpe_cache.get(word)
        if hit is not None:
            return hit
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best < 0:
                break
            first, second = parts[best], parts[best + 1]
            out, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        ids = [self.vocab[p] for p in parts]
        if len(self._bpe_cache) < 100_000:
            self._bpe_cache[word] = ids
        return ids

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids for text; control/user-defined tokens written in the text map to their single ids."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        if add_bos and self.bos_token_id is not None:
            ids.append(self.bos_token_id)
        pieces = self._special_re.split(text) if self._special_re is not None else [text]
        for n, piece in enumerate(pieces):
            if n % 2 == 1:
                ids.append(self.vocab[piece])
                continue
            for word in self._split.findall(piece):
                ids += self._bpe("".join(self._b2u[b] for b in word.encode("utf-8")))
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes a token stands for (may be part of a multi-byte UTF-8 character)."""
        return self._token_bytes[token_id]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text for ids; invalid or truncated UTF-8 becomes U+FFFD."""
        buf = b"".join(self._token_bytes[i] for i in ids if not (skip_special and i in self.special_ids))
        return buf.decode("utf-8", errors="replace")

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each token's own text (special tokens spelled out; partial UTF-8 shown as U+FFFD), e.g. for logprobs."""
        return [self._token_bytes[i].decode("utf-8", errors="replace") for i in ids]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render messages with the model's chat template (ChatML for SmolLM2), as transformers does."""
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"each chat message needs string 'role' and 'content' fields, got {m!r}")
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise ValueError(f"chat template rejected the messages: {message}")

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt)

    def incremental_decoder(self, skip_special: bool = True) -> IncrementalDecoder:
        """A streaming detokenizer for one sequence."""
        return IncrementalDecoder(self, skip_special)


class IncrementalDecoder:
    """Turns a stream of token ids into text deltas, holding back bytes of a UTF-8 character split over tokens."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """New text completed by this token ('' while a multi-byte character is still incomplete)."""
        if self.skip_special and token_id in self.tokenizer.special_ids:
            return ""
        return self._dec.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is still held back at the end of the stream (as U+FFFD if it was never completed)."""
        return self._dec.decode(b"", final=True)
