"""The VLM judge against a real OpenAI-compatible HTTP server on 127.0.0.1 (canned chat completions)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medrl.rewards import judge


class FakeJudgeServer:
    """A chat-completions endpoint whose reply depends on markers in the graded answer.

    GARBLE -> a reply with no score; SLOW -> answers after `slow_s`; FAIL500 -> the first
    request of that answer gets HTTP 500; BAD400 -> HTTP 400; otherwise "Score: 8".
    """

    def __init__(self, slow_s: float = 1.5):
        self.slow_s = slow_s
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._failed: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                # A request leaves the in-flight count before its reply is sent: once the client has
                # the reply it may send its next request, and this thread may not have run again yet
                # on a busy machine (counted after the write, a limit of 3 was seen as 4).
                try:
                    status, text = outer.reply(body)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1
                if status != 200:
                    self.send_response(status)
                    self.end_headers()
                    return
                out = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reply(self, body: dict) -> tuple[int, str]:
        text = body["messages"][-1]["content"][-1]["text"]
        answer = text.split("Assistant's answer:", 1)[-1]
        if "BAD400" in answer:
            return 400, ""
        if "FAIL500" in answer:
            with self._lock:
                first = answer not in self._failed
                self._failed.add(answer)
            if first:
                return 500, ""
        if "SLOW" in answer:
            time.sleep(self.slow_s)
        if "GARBLE" in answer:
            return 200, "I would rather not grade this."
        if "CONCURRENT" in answer:
            # Hold each request until a second one is in flight (or 10 s pass), so that requests
            # overlap however busy the machine is; more than the client's limit would still show.
            deadline = time.monotonic() + 10
            while self.in_flight < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
        return 200, "The findings match the reference.\nScore: 8"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with FakeJudgeServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("reply,expected", [
    ("Score: 8.5", 0.85), ("8.5/10", 0.85), ("Rating: 8.5", 0.85), ("8.5", 0.85), ("**Score:** 7", 0.7),
    ("Good answer.\nScore: 9/10", 0.9), ("score: 3 out of 5", 0.6), ("<think>maybe 2</think>Score: 6", 0.6),
    ("Score: 0", 0.0), ("Score: 10", 1.0),
    ("no number here", None), ("Score: 85", None), ("Score: -3", None), ("7 apples", None), ("", None),
])
def test_parse_score(reply, expected):
    got = judge.parse_score(reply)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_judge_scores_through_http_with_category_prompt_and_image(server, tmp_path):
    img = tmp_path / "cxr.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    res = judge.compute_score("medrl/report", "<think>t</think><answer>Small left effusion.</answer>",
                              "Small left pleural effusion.", {"question": "Describe the X-ray.", "image": str(img)},
                              base_url=server.url, model="judge-model", api_key="k", retries=0)
    assert res == {"score": 0.8, "judge_raw": 0.8, "judge_parsed": 1.0, "judge_default": 0.0,
                   "judge_error": 0.0, "judge_attempts": 1.0}
    req = server.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k"
    assert req["body"]["model"] == "judge-model"
    content = req["body"]["messages"][-1]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    text = content[-1]["text"]
    assert "radiology report" in text  # the report category's instructions
    assert "Small left effusion." in text and "Small left pleural effusion." in text and "Describe the X-ray." in text
    assert "<answer>" not in text  # the judge sees the answer section only


def test_category_from_extra_info_and_boxes_reference(server):
    judge.compute_score("custom/source", "[0.1, 0.2, 0.3, 0.4]", [[0.1, 0.2, 0.3, 0.4]], {"category": "grounding"},
                        base_url=server.url, retries=0, send_image=False)
    text = server.requests[-1]["body"]["messages"][-1]["content"][-1]["text"]
    assert "bounding boxes" in text and "[[0.1,0.2,0.3,0.4]]" in text


def test_unparseable_reply_gives_counted_default(server):
    res = judge.compute_score("medrl/vqa", "GARBLE", "yes", {}, base_url=server.url, default_score=0.3, retries=0)
    assert res["score"] == 0.3 and res["judge_default"] == 1.0 and res["judge_parsed"] == 0.0
    assert res["judge_error"] == 0.0


def test_timeout_retries_then_default(server):
    t0 = time.monotonic()
    res = judge.compute_score("medrl/vqa", "SLOW", "yes", {}, base_url=server.url, timeout=0.3, retries=1,
                              backoff=0.01)
    assert time.monotonic() - t0 < server.slow_s * 2
    assert res["judge_error"] == 1.0 and res["judge_default"] == 1.0 and res["judge_attempts"] == 2.0
    assert res["score"] == 0.5


def test_connection_refused_gives_default_without_raising():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    res = judge.compute_score("medrl/vqa", "yes", "yes", {}, base_url=url, retries=2, backoff=0.01)
    assert res["judge_error"] == 1.0 and res["judge_attempts"] == 3.0 and res["score"] == 0.5


def test_server_error_is_retried_client_error_is_not(server):
    res = judge.compute_score("medrl/vqa", "FAIL500 yes", "yes", {}, base_url=server.url, retries=2, backoff=0.01)
    assert res["judge_attempts"] == 2.0 and res["judge_parsed"] == 1.0 and res["score"] == 0.8
    res = judge.compute_score("medrl/vqa", "BAD400", "yes", {}, base_url=server.url, retries=3, backoff=0.01)
    assert res["judge_attempts"] == 1.0 and res["judge_error"] == 1.0


def test_async_variant_limits_concurrency(server):
    async def main():
        return await asyncio.gather(*[
            judge.compute_score_async("medrl/report", f"CONCURRENT {i}", "ref", {}, base_url=server.url,
                                      max_concurrency=2, retries=0) for i in range(6)])

    results = asyncio.run(main())
    assert [r["score"] for r in results] == [0.8] * 6
    assert server.max_in_flight == 2  # overlapping, but never more than the limit


def test_batch_variant_limits_concurrency(server):
    n = 6
    results = judge.compute_score_batch(["medrl/report"] * n, [f"CONCURRENT {i}" for i in range(n)], ["r"] * n,
                                        [{}] * n, base_url=server.url, max_concurrency=3, retries=0)
    assert len(results) == n and all(r["score"] == 0.8 for r in results)
    assert 2 <= server.max_in_flight <= 3


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="default_score"):
        judge.config_from({"default_score": 5})


class TinyModelServer(FakeJudgeServer):
    """A minimal OpenAI-compatible chat server backed by the tiny Qwen2.5-VL (a stand-in for `vllm serve`)."""

    def __init__(self, model_dir):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        super().__init__()
        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        self.replies: list[str] = []
        self._gen_lock = threading.Lock()

    def reply(self, body: dict) -> tuple[int, str]:
        import base64
        import io

        from PIL import Image

        messages, images = [], []
        for msg in body["messages"]:
            parts = msg["content"] if isinstance(msg["content"], list) else [{"type": "text", "text": msg["content"]}]
            content = []
            for part in parts:
                if part["type"] == "image_url":
                    data = part["image_url"]["url"].split(",", 1)[1]
                    images.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
                    content.append({"type": "image"})
                else:
                    content.append({"type": "text", "text": part["text"]})
            messages.append({"role": msg["role"], "content": content})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        with self._gen_lock, self.torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=min(int(body.get("max_tokens", 16)), 16),
                                      do_sample=False)
        reply = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        with self._lock:
            self.replies.append(reply)
        return 200, reply


def test_judge_against_a_served_tiny_model(tiny_model_dir, tmp_path):
    from PIL import Image

    img = tmp_path / "cxr.png"
    Image.new("RGB", (96, 96), (30, 30, 30)).save(img)
    with TinyModelServer(tiny_model_dir) as srv:
        async def main():
            return await asyncio.gather(*[
                judge.compute_score_async("medrl/grounding", f"<answer>[0.{i}, 0.1, 0.5, 0.5]</answer>",
                                          [[0.1, 0.1, 0.5, 0.5]], {"image": str(img), "question": "Locate it."},
                                          base_url=srv.url, model="tiny", retries=0, max_concurrency=2,
                                          default_score=0.25)
                for i in range(3)])

        results = asyncio.run(main())
    assert len(srv.replies) == 3
    for res in results:
        # A random-init model talks nonsense: whatever it said was parsed or counted as a default.
        assert res["judge_error"] == 0.0 and res["judge_attempts"] == 1.0
        assert res["judge_default"] + res["judge_parsed"] == 1.0
        assert 0.0 <= res["score"] <= 1.0
    expected = sorted(judge.parse_score(r) if judge.parse_score(r) is not None else 0.25 for r in srv.replies)
    assert sorted(r["score"] for r in results) == pytest.approx(expected)
    assert srv.requests[0]["body"]["messages"][-1]["content"][0]["type"] == "image_url"
