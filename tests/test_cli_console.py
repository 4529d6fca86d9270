"""What a user sees in the terminal from the CLI: one progress bar per phase, log lines on lines of their own, no
repeated lines, and full-gallery figures rounded with their 95 % intervals (issue 22).

The commands run as a user runs them, in a subprocess (logging and tqdm configured by ``main`` itself, not by
pytest), and their stderr is replayed as a terminal shows it: a carriage return goes back to the start of the line
and what follows overwrites it.
"""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BAR = re.compile(r"\d+%\|")


def on_screen(text: str) -> list[str]:
    """The non-blank lines a terminal shows for ``text``."""
    shown = []
    for raw in text.split("\n"):
        line = ""
        for part in raw.split("\r"):
            line = part + line[len(part) :]
        if line.strip():
            shown.append(line.rstrip())
    return shown


def run_cli(*args: str) -> tuple[int, str, list[str]]:
    done = subprocess.run([sys.executable, "-m", "workbench", *args], cwd=REPO, capture_output=True, timeout=600)
    # bytes, decoded here: text mode would turn each carriage return into a new line
    return done.returncode, done.stdout.decode(), on_screen(done.stderr.decode())


def test_fit_and_evaluate_draw_one_bar_per_phase_apart_from_the_log_lines(tmp_path, tiny_dataset):
    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path)]
    code, out, screen = run_cli("fit", "--ranker", "svm", *common)
    assert code == 0, screen
    bars = [line for line in screen if BAR.search(line)]
    assert [line.split(":")[0] for line in bars] == ["featurize (pretrained)", "fit"], screen  # one per phase
    assert "18/18" in bars[0] and "1/1" in bars[1] and "svm" in bars[1]
    assert not [line for line in bars if "INFO" in line or "WARNING" in line], screen  # never on a bar's line
    assert len(screen) == len(set(screen)), screen  # no line twice
    assert not [line for line in screen if "faiss" in line], screen  # the loader's list of CPU builds is gone
    assert out.count("svm ranker fitted in") == 1 and not [line for line in screen if "fitted svm" in line]
    assert re.search(r"balanced accuracy \d+\.\d% \[\d+\.\d%, \d+\.\d%\]", out)  # with its 95 % interval

    code, out, screen = run_cli("evaluate", "--ranker", "cosine", "svm", *common)
    assert code == 0, screen
    assert [line.split(":")[0] for line in screen if BAR.search(line)] == ["featurize (pretrained)"]
    assert len(screen) == len(set(screen)), screen
    gallery = out[out.index("full gallery") :].splitlines()
    cosine = next(line for line in gallery if line.startswith("cosine "))
    assert len(re.findall(r"\d\.\d{3} \[\d\.\d{2}, \d\.\d{2}\]", cosine)) == 5, cosine  # five figures, five CIs
    assert (
        "(95 % intervals over the queries in brackets: Wilson score for recall@k, bootstrap for MAP@R and MRR)"
        in gallery
    )

    code, out, screen = run_cli("evaluate", "--ranker", "cosine", "--quiet", *common)
    assert code == 0 and not [line for line in screen if BAR.search(line) or "INFO" in line], screen
