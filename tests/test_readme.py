"""The README's quickstart runs as written and prints what its comment promises."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_matches_its_comment(tmp_path):
    text = README.read_text()
    quick = text[text.index("## Quickstart"):]
    bash = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", quick, re.S).group(1)
    for line in bash.strip().splitlines():
        args = line.split("#")[0].split()
        assert args[0].endswith("loopstack")
        r = subprocess.run([sys.executable, "-m", "loopstack", *args[1:]], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert python.count("print(") == 1
    show = "\nprint(result[['spam_7d', 'last_text']].to_json(orient='records'))"
    probe = python.replace("print(", "result = (") + show
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"spam_7d": 2, "last_text": "buy now 1"},
                                    {"spam_7d": 0, "last_text": "buy now 4"}]  # as the README's comment says
