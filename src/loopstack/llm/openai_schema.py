"""OpenAI wire format for the LLM server: request models, validation into engine inputs, response shapes.

Pure functions, no I/O: requests are checked here (unknown model, prompt too long for the context,
sampling values out of range, unsupported options) and every problem becomes an `ApiError` that the
server renders as the OpenAI error body ``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, ValidationError


MAX_STOP = 16          # stop strings per request
MAX_STOP_CHARS = 256   # characters per stop string


class ApiError(Exception):
    """An error a client caused (or a full queue): HTTP status plus the OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        """The OpenAI error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Req(BaseModel):
    # strict: "100" or true is not a max_tokens, 1.5 not a seed (lax pydantic would read them as 100, 1, ...)
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None          # extension (vLLM): -1 or 0 = off
    n: int | None = 1
    stream: bool | None = False
    stream_options: dict | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    ignore_eos: bool | None = False   # extension (vLLM)
    stop_token_ids: list[int] | None = None   # extension (vLLM)
    priority: int | None = 0          # extension (vLLM): lower is scheduled first
    user: str | None = None
    logit_bias: dict | None = None    # refused when set: the engine cannot bias logits


class CompletionRequest(_Req):
    """Body of POST /v1/completions."""
    prompt: Union[str, list[int], list[str], list[list[int]]]
    logprobs: int | None = None
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[dict], None] = None
    name: str | None = None


class ChatCompletionRequest(_Req):
    """Body of POST /v1/chat/completions."""
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list | None = None
    tool_choice: Union[str, dict, None] = None
    functions: list | None = None     # the deprecated forms of tools / tool_choice
    function_call: Union[str, dict, None] = None
    response_format: dict | None = None


@dataclass
class Prepared:
    """A validated request: the prompt as token ids and the sampling arguments for the engine."""
    prompt_ids: list[int]
    sampling: dict[str, Any]
    stream: bool
    include_usage: bool
    logprobs: int | None           # completions: top-n per token; chat: top_logprobs (0 = chosen token only)
    priority: int = 0


def parse(cls: type[BaseModel], body: Any) -> Any:
    """Validate a JSON body with pydantic; the first problem becomes a 400 naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e.get("loc", ()) if not _is_type_tag(x))
        missing = e.get("type") == "missing"
        msg = f"'{loc}' is a required field" if missing else f"invalid value for '{loc}': {e.get('msg')}"
        if loc.split(".")[0] in _HINTS:
            msg += f" ({loc.split('.')[0]} must be {_HINTS[loc.split('.')[0]]})"
        raise ApiError(400, msg, param=loc or None, code="missing_required_parameter" if missing else
                       "invalid_type") from None


_HINTS = {"prompt": "a string, a list of token ids, or a list holding one of those",
          "stop": "a string or a list of strings",
          "messages": "a list of {\"role\": \"system\"|\"user\"|\"assistant\", \"content\": \"...\"} objects"}
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_type_tag(x: object) -> bool:
    """pydantic puts the union member tried (e.g. 'list[int]') into an error's location; it is not a field."""
    return isinstance(x, str) and (x in _TYPE_TAGS or "[" in x)


def check_model(name: str, served: str) -> None:
    """400 unless the request names the served model (OpenAI clients always send a model)."""
    if name != served:
        raise ApiError(400, f"The model '{name}' does not exist; this server serves '{served}' "
                            "(see GET /v1/models).", param="model", code="model_not_found")


def _sampling(req: _Req, max_tokens: int, n_prompt: int, max_context: int, prompt_param: str) -> dict[str, Any]:
    """Range checks with OpenAI-style messages, then the SamplingParams keyword arguments."""
    if req.n not in (None, 1):
        raise ApiError(400, f"n={req.n} is not supported: this server returns one choice per request; send n=1 "
                            "(or several requests)", param="n")
    t = 1.0 if req.temperature is None else req.temperature
    if not math.isfinite(t) or t < 0:
        raise ApiError(400, f"temperature={req.temperature} is invalid: use a value >= 0 (0 = greedy)",
                       param="temperature")
    p = 1.0 if req.top_p is None else req.top_p
    if not (0 < p <= 1):
        raise ApiError(400, f"top_p={req.top_p} is invalid: use a value in (0, 1]", param="top_p")
    k = -1 if req.top_k in (None, 0) else req.top_k
    if k < -1:
        raise ApiError(400, f"top_k={req.top_k} is invalid: use -1 (off) or a positive integer", param="top_k")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0, 0.0):
            raise ApiError(400, f"{name} is not supported by this engine; leave it at 0", param=name)
    if req.logit_bias:
        raise ApiError(400, "logit_bias is not supported by this engine; leave it out", param="logit_bias")
    if max_tokens < 1:
        raise ApiError(400, f"max_tokens={max_tokens} is invalid: ask for at least 1 token", param="max_tokens")
    if n_prompt + max_tokens > max_context:
        raise ApiError(400, f"This model's maximum context length is {max_context} tokens. However, you requested "
                            f"{n_prompt + max_tokens} tokens ({n_prompt} in the {prompt_param}, {max_tokens} in the "
                            "completion). Please reduce the length of the prompt or max_tokens.",
                       param=prompt_param, code="context_length_exceeded")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if any(not s for s in stop):
        raise ApiError(400, "stop strings must not be empty", param="stop")
    # the engine checks every stop string against the text of every running sequence at each step:
    # thousands of long ones would slow every request in the batch
    if len(stop) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise ApiError(400, f"stop takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters "
                            f"(got {len(stop)}, the longest {max(map(len, stop))} characters)", param="stop")
    out: dict[str, Any] = {"max_tokens": max_tokens, "temperature": t, "top_p": p, "top_k": k, "seed": req.seed,
                           "stop": stop, "ignore_eos": bool(req.ignore_eos)}
    if req.stop_token_ids:
        out["stop_token_ids"] = list(req.stop_token_ids)
    return out


def _check_text_size(text: str, tokenizer: Any, max_context: int, param: str) -> None:
    """400 before tokenizing a text that cannot fit the context (tokenizing megabytes blocks the event loop)."""
    per = getattr(tokenizer, "max_token_bytes", None)
    if not isinstance(per, int) or per < 1:
        return
    least = -(-len(text) // per)   # each token covers at most `per` bytes, so at most `per` characters
    if least >= max_context:
        raise ApiError(400, f"This model's maximum context length is {max_context} tokens. However, the {param} "
                            f"has {len(text)} characters, which is at least {least} tokens. Please reduce the "
                            f"length of the {param}.", param=param, code="context_length_exceeded")


def _check_ids(ids: list[int], vocab_size: int, param: str) -> list[int]:
    if not ids:
        raise ApiError(400, f"the {param} is empty: send at least one token", param=param)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ApiError(400, f"token id {bad[0]} in the {param} is outside the vocabulary [0, {vocab_size})",
                       param=param)
    return ids


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """A raw text prompt's token ids as the engine encodes text: BOS first when the tokenizer asks for it."""
    if getattr(tokenizer, "add_bos_token", False):
        return tokenizer.encode(text, add_bos=True)
    return tokenizer.encode(text)


def prepare_completion(req: CompletionRequest, tokenizer: Any, max_context: int, vocab_size: int) -> Prepared:
    """Token ids and sampling arguments for a /v1/completions request."""
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise ApiError(400, f"{len(prompt)} prompts in one request are not supported: send one prompt per "
                                "request", param="prompt")
        prompt = prompt[0]
    if req.echo:
        raise ApiError(400, "echo=true is not supported", param="echo")
    if req.suffix:
        raise ApiError(400, "suffix is not supported", param="suffix")
    if req.best_of not in (None, 1):
        raise ApiError(400, "best_of > 1 is not supported", param="best_of")
    if isinstance(prompt, str):
        _check_text_size(prompt, tokenizer, max_context, "prompt")
    ids = encode_prompt(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    _check_ids(ids, vocab_size, "prompt")
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    sampling = _sampling(req, max_tokens, len(ids), max_context, "prompt")
    lp = req.logprobs
    if lp is not None and not 0 <= lp <= 20:
        raise ApiError(400, f"logprobs={lp} is invalid: use 0..20 (top alternatives per token)", param="logprobs")
    if lp is not None:
        sampling["logprobs"] = lp
    return Prepared(ids, sampling, bool(req.stream), _include_usage(req), lp, req.priority or 0)


def _message_text(m: ChatMessage, i: int) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    parts = []
    for part in m.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages[{i}].content: only text parts are supported (got type "
                                f"{part.get('type')!r})", param=f"messages.{i}.content")
        parts.append(part["text"])
    return "".join(parts)


def prepare_chat(req: ChatCompletionRequest, tokenizer: Any, max_context: int, vocab_size: int,
                 kv_tokens: int | None = None) -> Prepared:
    """Render the messages with the model's chat template (ChatML), tokenize, validate sampling.

    Without max_tokens a chat may use the rest of the context, capped by what one request can hold in
    the KV cache (`kv_tokens`), so a small cache does not turn every default request into a 400."""
    if not req.messages:
        raise ApiError(400, "messages is empty: send at least one message", param="messages")
    for name in ("tools", "functions", "tool_choice", "function_call"):
        value = getattr(req, name)
        if value and value not in ("none", "auto"):   # "none" / "auto" without tools: plain text, as asked
            raise ApiError(400, "tools / function calling is not supported by this server", param=name)
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise ApiError(400, "only response_format type 'text' is supported", param="response_format")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _message_text(m, i)}
                for i, m in enumerate(req.messages)]
    _check_text_size("".join(m["content"] for m in messages), tokenizer, max_context, "messages")
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as exc:   # the template refused them (e.g. roles must alternate): the request's fault
        raise ApiError(400, f"the model's chat template cannot render these messages: {exc}",
                       param="messages") from None
    ids = _check_ids(tokenizer.encode(text), vocab_size, "messages")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = max(1, min(max_context, kv_tokens or max_context) - len(ids))
    sampling = _sampling(req, max_tokens, len(ids), max_context, "messages")
    lp: int | None = None
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= 20:
        raise ApiError(400, f"top_logprobs={req.top_logprobs} is invalid: use 0..20", param="top_logprobs")
    if req.logprobs:
        lp = req.top_logprobs or 0
        sampling["logprobs"] = lp
    elif req.top_logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    return Prepared(ids, sampling, bool(req.stream), _include_usage(req), lp, req.priority or 0)


def _include_usage(req: _Req) -> bool:
    return bool(req.stream and req.stream_options and req.stream_options.get("include_usage"))


def usage(n_prompt: int, n_completion: int) -> dict:
    """The OpenAI usage object."""
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def completion_body(rid: str, created: int, model: str, text: str, finish: str | None, logprobs: dict | None,
                    use: dict | None, chunk: bool = False) -> dict:
    """A /v1/completions response, or one of its stream chunks (same object type, text is the delta)."""
    body = {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
    if use is not None or not chunk:
        body["usage"] = use
    return body


def chat_body(rid: str, created: int, model: str, text: str, finish: str | None, logprobs: dict | None,
              use: dict) -> dict:
    """A /v1/chat/completions (non-streaming) response."""
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                         "finish_reason": finish}], "usage": use}


def chat_chunk(rid: str, created: int, model: str, delta: dict | None, finish: str | None = None,
               logprobs: dict | None = None, use: dict | None = None) -> dict:
    """One chat.completion.chunk; `delta=None` is the usage-only chunk (empty choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def format_logprobs(tokenizer: Any, entries: list | None, ids: list[int], k: int, chat: bool,
                    offset: int) -> dict | None:
    """Engine logprobs (per token {token_id: logprob}, chosen token included) in OpenAI form, top-k per token."""
    if entries is None:
        return None
    chosen, tops = [], []
    for i, e in zip(ids, entries):
        chosen.append(float(e.get(i, max(e.values(), default=0.0))))
        tops.append(sorted(((int(t), float(v)) for t, v in e.items()), key=lambda x: -x[1])[:k])
    if chat:
        raw = getattr(tokenizer, "token_bytes", None)

        def item(i: int, lp: float) -> dict:
            t = tokenizer.decode([i], skip_special=False)
            return {"token": t, "logprob": lp, "bytes": list(raw(i) if raw else t.encode("utf-8"))}
        return {"content": [{**item(i, lp), "top_logprobs": [item(t, v) for t, v in top]}
                            for i, lp, top in zip(ids, chosen, tops)]}
    tok = [tokenizer.decode([i], skip_special=False) for i in ids]
    offsets, pos = [], offset
    for t in tok:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tok, "token_logprobs": chosen, "text_offset": offsets,
            "top_logprobs": [{tokenizer.decode([t], skip_special=False): v for t, v in top} for top in tops]}
