"""`medrl reward check`: built-in rewards keep the contract, and each kind of violation is caught and named."""

from __future__ import annotations

import json
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from medrl.cli import main
from medrl.rewards.contract import run_check

SIGNATURE = "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"


def reward_file(tmp_path, body: str, header: str = "") -> str:
    path = tmp_path / "candidate.py"
    path.write_text(textwrap.dedent(header) + SIGNATURE + textwrap.indent(textwrap.dedent(body), "    "))
    return str(path)


@pytest.mark.parametrize("target", ["iou", "bleu", "format", "vqa", "enhanced", "change", None,
                                    "recipes/rewards/grounding.yaml", "recipes/rewards/report.yaml",
                                    "recipes/rewards/enhanced.yaml", "custom_reward/iou_reward.py",
                                    "custom_reward/change_reward.py",
                                    '{"routes": {"medrl/grounding": {"iou": 1.0}}, "kwargs": {"iou": {"iou_mode": "region"}}}'])
def test_built_in_rewards_keep_the_contract(target, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    report = run_check(target)
    assert report.ok, report.summary()
    assert all(u.calls >= 90 for u in report.units)  # every output against every ground truth, twice


def test_judge_keeps_the_contract_against_an_endpoint():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Score: 8"}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        spec = {"routes": {"medrl/report": {"judge": {"weight": 1.0, "base_url": url, "model": "m", "retries": 0}}}}
        report = run_check(spec, repeats=1)
    finally:
        server.shutdown()
    assert report.ok, report.summary()


@pytest.mark.parametrize("body, header, kind, first_input, detail", [
    ("return {'score': 1.0 / len(solution_str)}\n", "", "raises", "output 'empty answer'", "ZeroDivisionError"),
    ("end = time.time() + 5\nwhile '<think>' in solution_str and '</think>' not in solution_str and time.time() < end:"
     "\n    pass\nreturn 0.0\n", "import time\n", "hangs", "output 'unclosed think'", "still running after 0.2 s"),
    ("return float('nan') if '<answer>' not in solution_str else 1.0\n", "", "not finite", "output 'empty answer'",
     "score = nan"),
    ("return {'score': float(solution_str.count('['))}\n", "", "out of range", "output 'well-formed answer'",
     "score 1 outside [0, 0.5]"),
    ("return None if not solution_str else 0.0\n", "", "bad return", "output 'empty answer'", "returned NoneType"),
    ("return {'n': 1.0}\n", "", "bad return", "output 'empty answer'", "without 'score'"),
    ("return {'score': 0.0, 'note': solution_str[:5]}\n", "", "not a number", "output 'empty answer'", "note = ''"),
    ("out = {'score': 0.0}\nif '<answer>' in solution_str:\n    out['iou'] = 1.0\nreturn out\n", "",
     "keys differ", "output 'well-formed answer'", "the first call returned ['score']"),
    ("return {'score': 0.0, 'b': 1.0}\n", "KEYS = ('score', 'a')\n", "keys differ", "output 'empty answer'",
     "KEYS declares ['score', 'a']"),
    ("return random.random()\n", "import random\n", "non-deterministic", "output 'empty answer'",
     "a second call with the same input"),
    ("time.sleep(0.003)\nreturn 0.0\n", "import time\n", "slow", "output '", "> 1 ms"),
])
def test_each_violation_is_caught_and_names_its_input(tmp_path, body, header, kind, first_input, detail):
    header += "SCORE_RANGE = (0, 0.5)\n" if kind == "out of range" else ""
    path = reward_file(tmp_path, body, header)
    report = run_check(path, max_ms=1.0, timeout_s=0.2, repeats=2)
    found = {v.kind: v for v in report.violations}
    assert kind in found, report.summary()
    v = found[kind]
    assert v.input.startswith(first_input) and detail in v.detail, v
    assert not report.ok


def test_cli_exits_non_zero_naming_the_input(tmp_path, capsys):
    path = reward_file(tmp_path, "return {'score': 1.0 / len(solution_str)}\n")
    assert main(["reward", "check", path]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION raises" in out and "first: output 'empty answer' x one true box" in out
    assert "time per call: p50" in out and "FAILED" in out
    ok = reward_file(tmp_path, "return {'score': 0.5}\n")
    assert main(["reward", "check", f"{ok}:compute_score"]) == 0
    assert "OK: the contract holds" in capsys.readouterr().out
    assert main(["reward", "check", str(tmp_path / "nope.py")]) == 2
    assert "nope.py: no such file" in capsys.readouterr().err


def test_data_rows_are_used_with_their_ground_truths(tmp_path, capsys):
    # Fails only on rows with two true boxes: no built-in ground truth has that shape for this data source.
    path = reward_file(tmp_path, "import json\nboxes = json.loads(ground_truth)\nassert len(boxes) < 2, 'two boxes'\n"
                                 "return 0.0\n")
    rows = [{"data_source": "my/lesions", "reward_model": {"style": "rule", "ground_truth": gt},
             "extra_info": {"index": i, "width": 512, "height": 512}}
            for i, gt in enumerate(["[[0.1,0.1,0.2,0.2]]", "[]", "[[0.1,0.1,0.2,0.2],[0.5,0.5,0.6,0.6]]"])]
    data = tmp_path / "train.parquet"
    pd.DataFrame(rows).to_parquet(data)
    assert main(["reward", "check", path, "--data-source", "my/lesions", "--ground-truth", "[]"]) == 0
    capsys.readouterr()
    assert main(["reward", "check", path, "--data", str(data)]) == 1
    out = capsys.readouterr().out
    assert f"x {data} row 2 [data_source my/lesions]" in out and "AssertionError: two boxes" in out
    assert "calls on my/lesions" in out


def test_each_reward_of_a_spec_gets_only_its_routes_rows(tmp_path):
    # The user's grounding reward parses JSON boxes; report rows (free text) must not reach it.
    reward_file(tmp_path, "import json\nreturn float(len(json.loads(ground_truth)) > 0)\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("routes:\n  medrl/grounding: [{name: iou, weight: 0.5}, {path: candidate.py, weight: 0.5}]\n"
                    "  medrl/report: {bleu: 1.0}\n")
    rows = [{"data_source": "medrl/grounding", "ground_truth": "[[0.1, 0.1, 0.2, 0.2]]", "extra_info": {}},
            {"data_source": "medrl/report", "ground_truth": "Small effusion.", "extra_info": {}}]
    report = run_check(str(spec), rows=rows, repeats=1)
    assert report.ok, report.summary()
    sources = {u.unit.label: u.unit.data_sources for u in report.units}
    assert sources == {"iou": ("medrl/grounding",), "candidate": ("medrl/grounding",), "bleu": ("medrl/report",),
                       "composed spec": ("medrl/grounding", "medrl/report")}
    with pytest.raises(ValueError, match=r"no reward route for data_source \['medrl/vqa'\]"):
        run_check(str(spec), rows=rows + [{"data_source": "medrl/vqa", "ground_truth": "yes"}])


def test_the_first_call_pays_for_imports_untimed(tmp_path):
    path = reward_file(tmp_path, "global LOADED\nif not LOADED:\n    time.sleep(0.3)  # e.g. loading a lexicon\n"
                                 "    LOADED = True\nreturn 0.0\n", "import time\nLOADED = False\n")
    report = run_check(path, max_ms=1.0, repeats=1)
    assert report.ok and max(report.units[0].times_ms) < 300, report.summary()


def test_a_composed_spec_may_leave_zero_one_as_its_terms_declare(tmp_path):
    # A count-like reward in [0, 2] at weight 0.5 beside IoU at 0.5: the composed score lies in [0, 1.5].
    reward_file(tmp_path, "return 2.0\n", "SCORE_RANGE = (0.0, 2.0)\n")
    spec = {"routes": {"medrl/grounding": [{"name": "iou", "weight": 0.5},
                                           {"path": str(tmp_path / "candidate.py"), "weight": 0.5}]}}
    report = run_check(spec, repeats=1)
    assert report.ok, report.summary()
    assert "score range [0, 1.5]" in report.summary()
