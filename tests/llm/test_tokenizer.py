"""Byte-level BPE from GGUF metadata: ids, text, chat template and streaming equal transformers' GGUF tokenizer."""

from __future__ import annotations

import pytest

from loopstack.llm.models.tokenizer import IncrementalDecoder, Tokenizer, bytes_to_unicode

TEXTS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n and   runs      of spaces \n\n\n",
    "digits 0123456789 and 3.14159, 1,000,000 and -42",
    "héllo wörld — naïve café, Ünïcödé",
    "emoji 😀🎉👍🏽 and family 👨‍👩‍👧‍👦 and flags 🇫🇷",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Ελληνικά και русский текст",
    "code: def f(x):\n    return x**2  # comment\n",
    "contractions: I'm, you're, we've, they'll, it's, I'd",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "special inline<|endoftext|>text<file_sep>more",
    "symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "",
    " ",
    "a",
]


@pytest.fixture(scope="module")
def tok(real_model) -> Tokenizer:
    return real_model[1]


@pytest.mark.llm_real
def test_encode_matches_transformers(tok, hf_tokenizer):
    for text in TEXTS:
        assert tok.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False), text


@pytest.mark.llm_real
def test_decode_matches_transformers_and_round_trips(tok, hf_tokenizer):
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special=False) == text
        for skip in (True, False):
            assert tok.decode(ids, skip_special=skip) == hf_tokenizer.decode(ids, skip_special_tokens=skip), text


@pytest.mark.llm_real
def test_special_tokens_and_ids(tok):
    assert tok.vocab_size == 49152
    assert tok.encode("<|im_start|>") == [1] and tok.encode("<|im_end|>") == [2]
    assert tok.eos_token_id == 2 and tok.bos_token_id == 1
    assert tok.encode("hi", add_bos=True)[0] == tok.bos_token_id
    assert tok.decode([1, *tok.encode("hi"), 2]) == "hi"


@pytest.mark.llm_real
@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "×2?"}],
])
def test_chat_template_matches_transformers(tok, hf_tokenizer, messages):
    for gen in (True, False):
        want = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert tok.apply_chat_template(messages, add_generation_prompt=gen) == want


@pytest.mark.llm_real
def test_chat_template_rejects_malformed_messages(tok):
    with pytest.raises(ValueError, match="'role' and 'content'"):
        tok.apply_chat_template([{"role": "user"}])


@pytest.mark.llm_real
def test_incremental_decoder_streams_split_utf8(tok):
    text = "naïve 😀👍🏽 日本語 ok"
    ids = tok.encode(text)
    assert any(not _valid_utf8(tok.token_bytes(i)) for i in ids), "test text should split characters over tokens"
    dec = tok.incremental_decoder()
    deltas = [dec.feed(i) for i in ids]
    assert "".join(deltas) + dec.flush() == text
    assert all("\ufffd" not in d for d in deltas)


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _byte_tokenizer() -> Tokenizer:
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)] + ["ab", "abc", "<|end|>"]
    return Tokenizer(tokens, ["a b", "ab c"], [1] * 258 + [3], eos_token_id=258)


def test_bpe_merges_by_rank_and_specials_without_the_real_model():
    tok = _byte_tokenizer()
    b, c = ord("b"), ord("c")
    assert tok.encode("abc") == [257]
    assert tok.encode("abab") == [256, 256]
    assert tok.encode("cab<|end|>x") == [c, 256, 258, ord("x")]
    assert tok.decode(tok.encode("cab<|end|>x")) == "cabx"
    assert tok.decode(tok.encode("cab<|end|>x"), skip_special=False) == "cab<|end|>x"
    assert tok.token_strings(tok.encode("cab<|end|>")) == ["c", "ab", "<|end|>"]
    assert tok.encode(" b") == [32, b]  # token id == byte value in this vocabulary


def test_incremental_decoder_holds_back_partial_characters():
    tok = _byte_tokenizer()
    dec = IncrementalDecoder(tok)
    raw = "é😀".encode()
    out = [dec.feed(byte) for byte in raw]
    assert out == ["", "é", "", "", "", "😀"]
    assert dec.feed(258) == ""  # special token skipped
    dec.feed(0xF0)
    assert dec.flush() == "\ufffd"  # a character never completed shows as U+FFFD at the end
    assert tok.decode(list(raw[:3])) == "é\ufffd"


def test_chatml_fallback_when_the_file_has_no_template():
    tok = _byte_tokenizer()
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs) == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(msgs[1:], add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


@pytest.mark.parametrize("how", ["length", "eos"])
def test_a_character_cut_off_by_the_end_of_the_output_is_not_dropped(how):
    # a sequence ending on the first bytes of a character (max_tokens, or the end-of-sequence token) lost them
    # without a trace, while decoding all its tokens gives U+FFFD and usage counted them
    from loopstack.llm.engine.output import append_tokens
    from loopstack.llm.engine.params import SamplingParams
    from loopstack.llm.engine.sequence import Sequence, SequenceStatus
    tok = _byte_tokenizer()
    raw = list("é😀".encode())                       # 2 + 4 bytes, one token each
    out = raw[:4] + ([] if how == "length" else [258])  # 'é' and half of '😀', then (maybe) the eos token
    seq = Sequence(0, "r", [ord("a")], SamplingParams(max_tokens=4 if how == "length" else 16))
    seq.detokenizer = tok.incremental_decoder()
    status = append_tokens(seq, out, None, eos_token_id=258, max_model_len=100)
    assert status == (SequenceStatus.FINISHED_LENGTH if how == "length" else SequenceStatus.FINISHED_STOPPED)
    assert seq.output_text == "é\ufffd" == tok.decode(out)
