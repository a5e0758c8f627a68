"""The command line's frame: the subcommand listing, --version, one-line errors for neurcore's own
errors, tracebacks for everything else, and the options the subcommands share.

Everything runs in-process through ``neurcore.cli.main`` except one ``python -m neurcore`` start-up.
"""

import subprocess
import sys

import pytest

import neurcore
import neurcore.pipelines
import neurcore.rules
from neurcore.cli import _build_parser, main
from neurcore.errors import BackendUnavailable, InputError
from conftest import one_error_line

SUBCOMMANDS = {
    "search": "explain units by rules over concepts (Network Dissection, beam search)",
    "dissect": "dissect layers of a model on a probe: results and an HTML report",
    "label": "label units with a vision-language model: CLIP-Dissect, LinEx, SIEVE",
    "circuit": "the circuit of a class: NeurFlow concept circuits or NeuCEPT critical neurons",
    "demo": "explain planted units of a synthetic concept set with the mask engine",
    "backends": "print which native backends are built and usable, as JSON",
}
#: The library function each subcommand calls, as (module, attribute), and a minimal argv.
CALLS = {
    "search": (neurcore.rules, "search_npz", ["--concepts", "C.npz", "--units", "U.npz", "--out", "R.jsonl"]),
    "dissect": (neurcore.pipelines, "dissect", ["--layer", "conv4", "--out", "d"]),
    "label": (neurcore.pipelines, "label", ["--layer", "conv4", "--out", "d"]),
    "circuit": (neurcore.pipelines, "circuit", ["--out", "d"]),
    "backends": (neurcore, "backends", []),
}


@pytest.fixture
def wide(monkeypatch):
    """Help text on one line per entry, so descriptions can be matched whole."""
    monkeypatch.setenv("COLUMNS", "250")


def test_bare_command_lists_every_subcommand_and_exits_0(wide, capsys):
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: neurcore") and err == ""
    for name, description in SUBCOMMANDS.items():
        assert any(line.split() == [name, *description.split()] for line in out.splitlines()), name


def test_python_dash_m_without_a_subcommand_prints_the_usage():
    res = subprocess.run([sys.executable, "-m", "neurcore"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert all(name in res.stdout for name in SUBCOMMANDS)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"neurcore {neurcore.__version__}\n"


def test_malformed_npz_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "junk.npz").write_text("not a zip")
    out = tmp_path / "R.jsonl"
    argv = ["search", "--concepts", str(tmp_path / "junk.npz"), "--units", str(tmp_path / "junk.npz"),
            "--out", str(out)]
    assert main(argv) == 2
    assert "not a readable .npz" in one_error_line(capsys, "search")
    assert not out.exists()


def test_missing_probe_folder_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["dissect", "--layer", "conv4", "--probe", f"folder:{tmp_path / 'nope'}", "--out", str(out),
            "--quiet"]
    assert main(argv) == 2
    assert "nope: no such directory" in one_error_line(capsys, "dissect")
    assert not (out / "results.jsonl").exists()


@pytest.mark.parametrize("command", list(CALLS))
@pytest.mark.parametrize("error", [InputError("bad field 'x'"), BackendUnavailable("no CUDA module here")])
def test_every_neurcore_error_is_one_line_and_exit_2(command, error, monkeypatch, capsys):
    module, attribute, argv = CALLS[command]

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(module, attribute, fail)
    assert main([command, *argv]) == 2
    assert one_error_line(capsys, command) == f"neurcore {command}: error: {error}"


@pytest.mark.parametrize("command", list(CALLS))
@pytest.mark.parametrize("bug", [ZeroDivisionError, ValueError, RuntimeError, ImportError])
def test_any_other_exception_propagates(command, bug, monkeypatch, capsys):
    """A bug, a CUDA failure or a missing import is not bad input: it keeps its type and traceback."""
    module, attribute, argv = CALLS[command]

    def fail(*args, **kwargs):
        raise bug("a bug")

    monkeypatch.setattr(module, attribute, fail)
    with pytest.raises(bug, match="a bug"):
        main([command, *argv])
    assert capsys.readouterr().err == ""


def test_argparse_errors_stay_one_line_and_exit_2(capsys):
    cases = [(["search", "--concepts", "C.npz"], "the following arguments are required: --units"),
             (["dissect", "--out", "d"], "the following arguments are required: --layer"),
             (["circuit", "--out", "d", "--fdr", "2"], "--fdr: must lie in (0, 1), got 2.0"),
             (["nope"], "invalid choice: 'nope'")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and message in err, (argv, err)


def test_demo_checks_the_concept_count_before_running(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--concepts", "5"])
    assert exit_info.value.code == 2
    expected = "neurcore: error: demo needs --concepts >= 13 (the planted units use c0..c12)\n"
    assert capsys.readouterr().err == expected


NETWORK = ["--model", "resnet18", "--weights", "w.pt", "--layer", "a", "--layer", "b", "--probe", "folder:P",
           "--probe-images", "7", "--batch-size", "3", "--out", "o", "--quiet"]
LABELS = ["--vlm", "RN50", "--vlm-weights", "v.pt", "--sim-vlm", "RN101", "--sim-vlm-weights", "s.pt",
          "--vocabulary", "words.txt", "--generator", "diffusers:G", "--generated", "9",
          "--generator-steps", "4", "--similarity", "wpmi", "--tau", "2.5", "--top-n", "6", "--top-k", "2"]
NETWORK_VALUES = {"model": "resnet18", "weights": "w.pt", "layer": ["a", "b"], "probe": "folder:P",
                  "probe_images": 7, "batch_size": 3, "out": "o", "quiet": True}
LABEL_VALUES = {"vlm": "RN50", "vlm_weights": "v.pt", "sim_vlm": "RN101", "sim_vlm_weights": "s.pt",
                "vocabulary": "words.txt", "generator": "diffusers:G", "generated": 9, "generator_steps": 4,
                "similarity": "wpmi", "tau": 2.5, "top_n": 6, "top_k": 2}


@pytest.mark.parametrize("command", ["dissect", "label"])
def test_network_and_label_options_are_shared_by_dissect_and_label(command):
    args = _build_parser().parse_args([command, *NETWORK, *LABELS])
    assert {k: getattr(args, k) for k in NETWORK_VALUES} == NETWORK_VALUES
    assert {k: getattr(args, k) for k in LABEL_VALUES} == LABEL_VALUES
    defaults = _build_parser().parse_args([command, "--layer", "a", "--out", "o"])
    assert (defaults.model, defaults.weights, defaults.probe, defaults.probe_images, defaults.batch_size,
            defaults.quiet) == ("default", None, "default", None, 64, False)
    assert (defaults.vlm, defaults.sim_vlm, defaults.generator, defaults.generated, defaults.similarity,
            defaults.tau, defaults.top_n, defaults.top_k) == ("default", "default-2", "synthetic", 50,
                                                              "soft_wpmi", 10.0, 20, 3)


def test_circuit_and_search_keep_their_own_options():
    args = _build_parser().parse_args(["circuit", "--model", "default-circuit", "--probe", "folder:P",
                                       "--out", "o", "--quiet", "--tau", "4", "--top-k", "8",
                                       "--device", "cuda"])
    assert (args.model, args.probe, args.out, args.quiet, args.tau, args.top_k, args.device) == (
        "default-circuit", "folder:P", "o", True, 4, 8, "cuda")
    defaults = _build_parser().parse_args(["circuit", "--out", "o"])
    assert (defaults.tau, defaults.top_k, defaults.layers, defaults.method) == (
        16, 50, "conv4,conv3", "neurflow")
    args = _build_parser().parse_args(["search", "--concepts", "C", "--units", "U", "--out", "R",
                                       "--layer", "l4"])
    assert (args.layer, args.method, args.length, args.beam, args.quantile, args.device) == (
        "l4", "beam", 3, 5, 0.005, "cpu")
    for command, argv in [("circuit", ["--out", "o", "--probe-images", "3"]), ("search", ["--quiet"]),
                          ("demo", ["--out", "o"]), ("backends", ["--model", "m"])]:
        with pytest.raises(SystemExit):
            _build_parser().parse_args([command, *argv])


def test_shared_options_keep_each_subcommand_s_help(wide, capsys):
    helps = {}
    for command in ("dissect", "label"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = capsys.readouterr().out
    assert "--model MODEL         default (embedded, trained on first use), resnet18" in helps["dissect"]
    assert "--model MODEL         default, resnet18, resnet50 or vit_b_16" in helps["label"]
    assert "--out DIR             output directory (results, cache, report)" in helps["dissect"]
    for text in helps.values():
        assert "vision-language labels (clip-dissect, linex, sieve):" in text
        assert "--probe PROBE         default (synthetic world), synthetic-broden (the" in text


def test_circuit_takes_weights_and_passes_them_on(monkeypatch, capsys):
    """``circuit --weights``: the file reaches the pipeline; the default model refuses one (its own)."""
    seen = {}

    def fake_circuit(model, class_name, layers, out, **kwargs):
        seen.update(model=model, weights=kwargs["weights"])
        return {"class": "c", "nodes": [], "edges": []}

    monkeypatch.setattr(neurcore.pipelines, "circuit", fake_circuit)
    assert main(["circuit", "--model", "torchvision:resnet18", "--weights", "w.pt", "--out", "o"]) == 0
    assert seen == {"model": "torchvision:resnet18", "weights": "w.pt"}
    capsys.readouterr()
    monkeypatch.undo()
    assert main(["circuit", "--model", "default", "--weights", "w.pt", "--out", "o", "--quiet"]) == 2
    assert "the default model brings its own weights" in one_error_line(capsys, "circuit")
