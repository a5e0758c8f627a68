"""The README's two set-up commands, the CI script and the command line agree."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_them():
    commands = readme_commands()
    assert len(commands) == 2, commands
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith("#")]
    assert commands[0] in ci_lines and commands[1] in ci_lines
    assert ci_lines[-1] == commands[1]  # the test command is what CI ends with


def test_cli_demo_recovers_planted_units():
    out = subprocess.run([sys.executable, "-m", "neurcore", "demo", "--images", "400", "--concepts", "60"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recovered 6 of 6 planted explanations" in out.stdout


def test_cli_backends_and_bad_arguments():
    out = subprocess.run([sys.executable, "-m", "neurcore", "backends"], capture_output=True, text=True)
    assert out.returncode == 0 and '"level"' in out.stdout
    bad = subprocess.run([sys.executable, "-m", "neurcore", "demo", "--concepts", "5"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--concepts >= 13" in bad.stderr


def readme_python_examples() -> list[tuple[int, str]]:
    """(line, code) of every ```python block of README.md."""
    text = (ROOT / "README.md").read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(r"```python\n(.+?)\n```", text, flags=re.S)]


def test_readme_has_an_example_per_backend_call():
    code = "\n".join(c for _, c in readme_python_examples())
    for call in ("intersect_counts(", "OptimalSearch(", "BeamSearch(", "ClipDissect(", "NeurFlow(",
                 "critical_neurons(", "export_results(", "import_results(", "compare("):
        assert call in code, f"README has no Python example calling {call}"


@pytest.mark.parametrize("line", [line for line, _ in readme_python_examples()])
def test_readme_python_examples_run(line, tmp_path, monkeypatch):
    """Each example runs as written (in a fresh namespace, in an empty working directory)."""
    (code,) = [c for first, c in readme_python_examples() if first == line]
    monkeypatch.chdir(tmp_path)
    exec(compile("\n" * (line - 1) + code, "README.md", "exec"), {"__name__": "__readme__"})
