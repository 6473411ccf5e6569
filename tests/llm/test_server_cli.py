"""`loopstack llm serve|generate`: options reach the engine config and the server; generate streams the text."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import loopstack.llm.cli as llm_cli
from loopstack.cli import app
from loopstack.llm.engine.params import CompletionOutput, RequestOutput, SamplingParams
from tests.llm.server_helpers import CharTokenizer, FakeEngine

runner = CliRunner()


class FakeLLM:
    """What the CLI needs from loopstack.llm.api.LLM: engine, tokenizer, stream()."""

    def __init__(self, **kw) -> None:
        self.kw = kw
        self.engine = FakeEngine()
        self.engine.config = SimpleNamespace(max_model_len=256)
        self.tokenizer = CharTokenizer()
        self.streamed: list = []

    def stream(self, prompt, params):
        self.streamed.append((prompt, params))
        text = ""
        for i, ch in enumerate("héllo"):
            text += ch
            yield RequestOutput("r", list(prompt), [CompletionOutput(text, list(range(i + 1)),
                                                                     "length" if i == 4 else None)], i == 4)


@pytest.fixture(autouse=True)
def _restore_access_log():
    """`serve` points the loopstack.access logger at this test's stdout; put it back for the other tests."""
    import logging
    logger = logging.getLogger("loopstack.access")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def fake_llm(monkeypatch):
    made: list[FakeLLM] = []

    def load(model, kw):
        made.append(FakeLLM(model=model, **kw))
        return made[-1]

    monkeypatch.setattr(llm_cli, "_load", load)
    return made


def test_serve_maps_options_to_engine_config_and_binds_loopback(fake_llm, monkeypatch):
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append((app, kw)))
    r = runner.invoke(app, ["llm", "serve", "--port", "8123", "--kv-cache-mb", "32", "--max-num-seqs", "4",
                            "--max-num-batched-tokens", "512", "--no-enable-prefix-caching", "--speculative",
                            "ngram", "--num-speculative-tokens", "3", "--max-waiting", "10",
                            "--kv-cache-dtype", "float16"])
    assert r.exit_code == 0, r.output
    assert fake_llm[0].kw == {"model": "smollm2-135m", "kv_cache_mb": 32.0, "max_num_seqs": 4,
                              "max_num_batched_tokens": 512, "enable_prefix_caching": False,
                              "speculative_method": "ngram", "num_speculative_tokens": 3, "max_waiting": 10,
                              "kv_cache_dtype": "float16"}
    (served, kw), = calls
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123
    assert served.state.engine is fake_llm[0].engine
    assert served.state.max_body_bytes == 16 * 2**20
    assert [r.path for r in served.routes if r.path.startswith("/v1")] == [
        "/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/models/{model_id:path}"]


def test_serve_max_body_mb_reaches_the_app_and_a_bad_one_is_refused_before_loading(fake_llm, monkeypatch):
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append(app))
    r = runner.invoke(app, ["llm", "serve", "--max-body-mb", "0.5"])
    assert r.exit_code == 0, r.output
    assert calls[0].state.max_body_bytes == 2**19
    r = runner.invoke(app, ["llm", "serve", "--max-body-mb", "0"])
    assert r.exit_code == 2 and "--max-body-mb must be a positive number" in r.output
    assert len(fake_llm) == 1 and len(calls) == 1


@pytest.mark.parametrize("args,msg", [
    (["--speculative", "medusa"], "use ngram, self or none"),
    (["--kv-cache-mb", "-1"], "kv_cache_mb must be positive"),
    (["--kv-cache-dtype", "int8"], "kv_cache_dtype must be one of float32, float16"),
    (["--num-speculative-tokens", "0", "--speculative", "self"], "num_speculative_tokens must be >= 1"),
    (["--kv-cache-mb", "nan"], "kv_cache_mb must be positive"),
    (["--kv-cache-mb", "inf"], "kv_cache_mb must be positive"),
    (["--max-model-len", "-5"], "max_model_len must be >= 2"),
    (["--max-model-len", "0"], "max_model_len must be >= 2"),
])
def test_serve_rejects_bad_options_with_a_clear_error(fake_llm, args, msg, monkeypatch):
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)   # a bad option that slips through must not serve
    r = runner.invoke(app, ["llm", "serve", *args])
    assert r.exit_code != 0 and not fake_llm
    assert msg in str(r.exception)


def test_generate_streams_text_with_the_chat_template(fake_llm):
    r = runner.invoke(app, ["llm", "generate", "Hi there", "--system", "Be brief.", "--max-tokens", "5",
                            "--no-stats"])
    assert r.exit_code == 0, r.output
    assert r.stdout == "héllo\n"
    (prompt, params), = fake_llm[0].streamed
    assert prompt == CharTokenizer().encode("[system]Be brief.\n[user]Hi there\n[assistant]")
    assert params.max_tokens == 5 and params.temperature == 0.0


def test_generate_raw_prompt_and_bad_sampling_values(fake_llm):
    r = runner.invoke(app, ["llm", "generate", "abc", "--raw", "--temperature", "0.7", "--seed", "3"])
    assert r.exit_code == 0, r.output
    (prompt, params), = fake_llm[0].streamed
    assert prompt == [97, 98, 99] and params.seed == 3 and params.temperature == 0.7
    assert "3 prompt + 5 generated tokens (length)" in r.stderr
    r = runner.invoke(app, ["llm", "generate", "abc", "--top-p", "0"])
    assert r.exit_code != 0 and "top_p must be in (0, 1]" in str(r.exception)
    assert len(fake_llm) == 1   # the model was not loaded for the bad call


def test_generate_raw_prompt_gets_bos_when_the_tokenizer_asks_for_it(fake_llm, monkeypatch):
    monkeypatch.setattr(CharTokenizer, "add_bos_token", True, raising=False)
    r = runner.invoke(app, ["llm", "generate", "abc", "--raw", "--no-stats"])
    assert r.exit_code == 0, r.output
    (prompt, _), = fake_llm[0].streamed
    assert prompt == [1, 97, 98, 99]   # what LLM.generate("abc") hands the model


@pytest.mark.llm_real
def test_generate_with_smollm2_streams_greedy_text(real_model, monkeypatch):
    from loopstack.llm.api import LLM
    model, tok = real_model
    monkeypatch.setattr(llm_cli, "_load", lambda name, kw: LLM(model, tokenizer=tok, **kw))
    r = runner.invoke(app, ["llm", "generate", "What is the capital of France? One word.", "--max-tokens", "8",
                            "--kv-cache-mb", "16"])
    assert r.exit_code == 0, r.output
    ref = LLM(model, tokenizer=tok, kv_cache_mb=16).chat([{"role": "user", "content": "What is the capital of "
                                                           "France? One word."}],
                                                         SamplingParams(max_tokens=8, temperature=0))
    assert r.stdout == ref[0].outputs[0].text + "\n" and "Paris" in r.stdout
    assert "TTFT" in r.stderr


@pytest.mark.llm_real
@pytest.mark.slow
def test_loopstack_llm_serve_process_with_openai_client(real_model_path, tmp_path):
    """The real command in its own process: load SmolLM2, serve on loopback, answer the openai client."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx
    import openai

    from tests.llm.server_helpers import free_port
    port = free_port()
    log = tmp_path / "serve.log"
    exe = Path(sys.executable).with_name("loopstack")   # the installed console script
    proc = subprocess.Popen([str(exe), "llm", "serve", "--port", str(port),
                             "--kv-cache-mb", "32", "--max-num-seqs", "4", "--log-level", "warning"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ})
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        comp = c.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=4,
                                    temperature=0)
        assert "Paris" in comp.choices[0].text

        def logged() -> bool:   # the access line is written just after the response is sent
            access = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            return any(a["path"] == "/v1/completions" and a["status"] == 200 and a["id"] == comp.id for a in access)
        end = time.monotonic() + 10
        while not logged() and time.monotonic() < end:
            time.sleep(0.05)
        assert logged(), log.read_text()
    except Exception as exc:
        raise AssertionError(f"{exc}\nserver output:\n{log.read_text()}") from exc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("port", ["99999", "0"])
def test_llm_serve_refuses_a_port_out_of_range_before_loading(monkeypatch, port):
    def no_load(*a, **k):   # the port is checked first: no model is loaded for a command that cannot bind
        raise AssertionError("loaded a model")
    monkeypatch.setattr(llm_cli, "_load", no_load)
    out = CliRunner().invoke(app, ["llm", "serve", "--port", port])
    assert out.exit_code == 2 and "Invalid value for '--port'" in out.output, out.output


@pytest.mark.parametrize("args,msg", [
    (["--raw", "--max-tokens", "600"], "exceed the context length of 512"),
    (["--max-tokens", "100", "--kv-cache-mb", "1"], "KV blocks but the cache has 2"),
    (["", "--raw"], "the prompt is empty"),
])
def test_generate_refused_request_is_a_clear_error_not_a_traceback(monkeypatch, args, msg):
    from loopstack.errors import LoopstackError
    from tests.llm.test_api import make_llm
    monkeypatch.setattr(llm_cli, "_load", lambda model, kw: make_llm(**{**kw, "num_kv_blocks": 2
                                                                         if "kv_cache_mb" in kw else 256}))
    prompt = [] if args[0] == "" else ["hello"]
    r = runner.invoke(app, ["llm", "generate", *prompt, *args, "--no-stats"])
    assert isinstance(r.exception, LoopstackError), r.exception   # main() prints `error: ...`, exits 2
    assert msg in str(r.exception)


@pytest.mark.parametrize("args,msg", [
    (["--raw", "--system", "Be brief."], "--system needs --chat"),
    (["--num-speculative-tokens", "8"], "--num-speculative-tokens needs --speculative"),
])
def test_generate_refuses_options_it_would_ignore(fake_llm, args, msg):
    r = runner.invoke(app, ["llm", "generate", "hi", *args])
    assert r.exit_code != 0 and msg in str(r.exception) and not fake_llm


def test_generate_with_an_unreadable_model_file_is_a_clear_error(tmp_path, monkeypatch):
    from loopstack.errors import LoopstackError
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    real_open = open

    def deny(path, *a, **k):   # chmod 000 does not stop root, so deny the read the way the OS would
        if str(path) == str(model):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    r = runner.invoke(app, ["llm", "generate", "hi", "-m", str(model)])
    assert isinstance(r.exception, LoopstackError) and "Permission denied" in str(r.exception)
