"""Helpers for the LLM server tests: uvicorn on a free loopback port, a char-level tokenizer, a fake engine.

The fake engine implements the LLMEngine methods the server uses (add_request, step, abort,
has_unfinished, metrics) with real block accounting, so the HTTP layer is tested in milliseconds; the
same server is also tested over the real engine in test_server_real.py.
"""
from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any, Iterator

import uvicorn

from loopstack.llm.engine.output import hold_back
from loopstack.llm.engine.params import CompletionOutput, QueueFullError, RequestOutput, SamplingParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on 127.0.0.1; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(30)


class CharTokenizer:
    """One token per ASCII character (id = code point, 3..127); 0 pad, 1 BOS, 2 EOS. A stand-in for tiny models."""

    bos_token_id, eos_token_id, vocab_size = 1, 2, 128

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [ord(c) if 3 <= ord(c) < 128 else ord("?") for c in text]
        return [self.bos_token_id, *ids] if add_bos else ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return "".join(chr(i) if i >= 3 else ("" if skip_special else f"<{i}>") for i in ids)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        text = "".join(f"[{m['role']}]{m['content']}\n" for m in messages)
        return text + ("[assistant]" if add_generation_prompt else "")


class FakeEngine:
    """Generates REPLY cyclically (one char per step per sequence), with block accounting and a waiting limit."""

    REPLY = "the quick brown fox jumps over the lazy dog. "

    def __init__(self, num_blocks: int = 64, block_size: int = 4, max_waiting: int = 8, max_running: int = 4,
                 step_s: float = 0.002, max_model_len: int = 256) -> None:
        self.num_blocks, self.block_size, self.max_waiting, self.max_running = (num_blocks, block_size, max_waiting,
                                                                                max_running)
        self.step_s, self.max_model_len = step_s, max_model_len
        self.tokenizer = CharTokenizer()
        self.block_manager = SimpleNamespace(num_blocks=num_blocks, block_size=block_size)
        self.waiting: list[str] = []
        self.running: dict[str, dict] = {}
        self.reqs: dict[str, dict] = {}
        self.paused = False
        self.fail_next = False
        self.aborted: list[str] = []
        self.added: list[tuple[str, SamplingParams, int]] = []
        self.steps = 0
        self.lock = threading.Lock()   # asserts single-threaded use: the server must only call from one thread
        self.thread_ids: set[int] = set()

    def _blocks(self, r: dict) -> int:
        return math.ceil((len(r["prompt"]) + len(r["out"])) / self.block_size)

    def used_blocks(self) -> int:
        return sum(self._blocks(r) for r in self.running.values())

    def add_request(self, request_id: str, prompt: list[int], params: SamplingParams, priority: int = 0) -> None:
        self.thread_ids.add(threading.get_ident())
        params.validate()
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt of {len(prompt)} tokens + max_tokens is longer than the context")
        if len(self.waiting) >= self.max_waiting:
            raise QueueFullError(f"{len(self.waiting)} requests waiting (limit {self.max_waiting})")
        self.reqs[request_id] = {"prompt": list(prompt), "params": params, "out": [], "text": "", "priority": priority}
        self.waiting.append(request_id)
        self.added.append((request_id, params, priority))

    def abort(self, request_id: str) -> None:
        self.thread_ids.add(threading.get_ident())
        self.aborted.append(request_id)
        self.running.pop(request_id, None)
        if request_id in self.waiting:
            self.waiting.remove(request_id)
        self.reqs.pop(request_id, None)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list[RequestOutput]:
        self.thread_ids.add(threading.get_ident())
        time.sleep(self.step_s)
        if self.paused:
            return []
        self.steps += 1
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated step failure")
        while self.waiting and len(self.running) < self.max_running:
            rid = self.waiting.pop(0)
            self.running[rid] = self.reqs[rid]
        outs = []
        for rid, r in list(self.running.items()):
            p: SamplingParams = r["params"]
            tok = ord(self.REPLY[len(r["out"]) % len(self.REPLY)])
            r["out"].append(tok)
            r["text"] += chr(tok)
            if p.logprobs is not None:
                r.setdefault("lp", []).append({tok: -0.5, **{t: -2.0 - k for k, t in enumerate((65, 66)[:p.logprobs])
                                                             if t != tok}})
            finish = None
            hit = next((s for s in p.stop if s in r["text"]), None)
            if hit is not None:
                r["text"] = r["text"][:r["text"].index(hit)]
                finish = "stop"
            elif len(r["out"]) >= p.max_tokens:
                finish = "length"
            text = r["text"] if finish else hold_back(r["text"], p.stop)
            comp = CompletionOutput(text, list(r["out"]), finish, list(r["lp"]) if "lp" in r else None)
            outs.append(RequestOutput(rid, r["prompt"], [comp], finish is not None))
            if finish is not None:
                del self.running[rid]
                del self.reqs[rid]
        return outs

    def metrics(self) -> dict[str, Any]:
        used = self.used_blocks()
        return {"num_waiting": len(self.waiting), "num_running": len(self.running), "kv_blocks_used": used,
                "kv_blocks_free": self.num_blocks - used, "prefix_cache_hit_rate": 0.25, "preemptions": 0,
                "ttft_history": [0.1, 0.2]}
