"""The README's two set-up commands, the CI script and the command line agree."""

import re
import subprocess
import sys
from pathlib import Path

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


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.+?)\n```", text, flags=re.S)
    exec(compile(example, "README.md", "exec"), {})
