"""Vision-language labels end to end: CLIP-Dissect, LinEx and SIEVE through ``label`` and ``neurcore
label``, one verifier for every method, resume without regenerating, a real open_clip architecture
and the tiny diffusers pipeline through the CLI, and bad input."""

import json
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from neurcore.errors import InputError  # noqa: E402
from neurcore.rules import parse  # noqa: E402
from neurcore.labels import Generator, SyntheticGenerator, train_tiny_clip  # noqa: E402
from neurcore.pipelines import label, read_vocabulary  # noqa: E402
from neurcore.models import ModelSpec, PlantedUnit  # noqa: E402
from neurcore.probe import SyntheticWorld  # noqa: E402
from neurcore.results import read_jsonl  # noqa: E402

PLANTED = ["sky", "circle", "(red AND square)"]
LINEAR = (("grass", 1.0), ("triangle", 2.0), ("yellow", -2.0))


def small_spec():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                                 torch.nn.Conv2d(8, 6, 3, padding=1), torch.nn.ReLU())
    planted = ([PlantedUnit("4", parse(f), identifiable=False) for f in PLANTED]  # labelling truths
               + [PlantedUnit("4", weights=LINEAR)])
    return ModelSpec(module, name="small", input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, planted=planted)


@pytest.fixture(scope="module")
def vlms():
    """Two briefly trained tiny CLIPs (the real training code, a few steps): explainer and simulator."""
    a, _ = train_tiny_clip("vit", steps=4, n_images=64, batch_size=16, calibration_images=40, progress=False)
    b, _ = train_tiny_clip("resnet", steps=4, n_images=64, batch_size=16, calibration_images=40, progress=False)
    # A few steps leave the cosines nearly flat; calibrate so that P(c|x) spans (0, 1) and LinEx has
    # concepts to fit (its filter keeps concepts whose top-5 P reach 0.5).
    images = SyntheticWorld(40, 32, seed=9).images(0, 40)
    for vlm in (a, b):
        cos = vlm.encode_image(images) @ vlm.encode_text(SyntheticWorld(1).concept_names).T
        vlm.calibration = (4.0 / max(float(cos.std()), 1e-6), -float(np.median(cos)))
    return a, b


class CountingGenerator(SyntheticGenerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts = []

    def generate_with_maps(self, prompt, n, seed=0):
        self.prompts.append(prompt)
        return super().generate_with_maps(prompt, n, seed)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, vlms):
    out = str(tmp_path_factory.mktemp("labels"))
    world = SyntheticWorld(150, 32, seed=3)
    gen = CountingGenerator(world)
    rows = label(small_spec(), ["4"], world, out_dir=out, vlm=vlms[0], sim_vlm=vlms[1], generator=gen,
                 n_generated=8, tau=2.0, top_n=10, progress=False)
    return out, world, gen, rows


def test_every_method_labels_every_unit(labelled):
    out, _, _, rows = labelled
    n_units = 6 + len(PLANTED) + 1
    for method in ("clip-dissect", "linex", "sieve"):
        got = [r for r in rows if r.method == method]
        assert [r.unit for r in got] == list(range(n_units)), method
        assert all(r.layer == "4" for r in got)
    cd = [r for r in rows if r.method == "clip-dissect"]
    assert all(r.formula in SyntheticWorld(1).concept_names and "similarity" in r.metrics for r in cd)
    lin = [r for r in rows if r.method == "linex"]
    assert all("simulation_r" in r.metrics and -1 <= r.metrics["simulation_r"] <= 1 for r in lin)
    assert all(len(r.extra["concepts"]) == len(r.extra["weights"]) for r in lin)
    # one verifier: CLIP-Dissect labels and SIEVE hypotheses carry the same verification scores
    for r in cd:
        assert 0 <= r.metrics["activation_rate"] <= 1 and 0 <= r.metrics["cosy_auc"] <= 1
    sieve = [r for r in rows if r.method == "sieve" and r.extra["selected"]]
    assert sieve, "tau 2 selects some units"
    for r in sieve:
        assert r.formula == r.extra["hypotheses"][0]["concept"]
        # SIEVE hypothesizes its top_k (3) concepts per cluster, whichever methods ran before it
        per_cluster = Counter(h["cluster"] for h in r.extra["hypotheses"])
        assert max(per_cluster.values()) <= 3 and len(r.extra["hypotheses"]) <= 3 * r.extra["clusters"]
        assert r.metrics["activation_rate"] == max(h["activation_rate"] for h in r.extra["hypotheses"])
    by_prompt = {}
    for r in cd + sieve:
        for h in r.extra.get("hypotheses", [{"concept": r.formula, "activation_rate": r.metrics["activation_rate"]}]):
            by_prompt.setdefault((r.unit, h["concept"]), set()).add(h["activation_rate"])
    assert all(len(v) == 1 for v in by_prompt.values())  # the same (unit, concept) scores the same everywhere
    # outputs
    assert len(read_jsonl(os.path.join(out, "labels.jsonl"))) == 3 * n_units
    header = open(os.path.join(out, "linex.csv")).readline().strip().split(",")
    assert header[:3] == ["layer", "unit", "val correlation"] and header[-1] == "bias"
    assert open(os.path.join(out, "clip_dissect.csv")).readline().strip() == "layer,unit,description,similarity"
    summary = json.load(open(os.path.join(out, "labels_summary.json")))
    layer = summary["layers"]["4"]
    assert set(layer["methods"]) == {"clip-dissect", "linex", "sieve"}
    assert layer["planted"]["linex"]["planted_concepts"] == 3
    assert layer["planted"]["clip-dissect"]["detectors"] == 2  # sky and circle; the formula is not a detector


def test_generated_once_per_prompt_and_resume_regenerates_nothing(labelled, vlms):
    out, world, gen, rows = labelled
    assert len(gen.prompts) == len(set(gen.prompts))  # one generation per distinct label, shared by methods
    again = CountingGenerator(world)
    rows2 = label(small_spec(), ["4"], world, out_dir=out, vlm=vlms[0], sim_vlm=vlms[1], generator=again,
                  n_generated=8, tau=2.0, top_n=10, progress=False)
    assert again.prompts == []
    assert [(r.method, r.unit, r.formula) for r in rows2] == [(r.method, r.unit, r.formula) for r in rows]


def test_interrupted_sieve_resumes_where_it_stopped(tmp_path, vlms):
    world = SyntheticWorld(120, 32, seed=4)

    class Dies(CountingGenerator):
        def generate_with_maps(self, prompt, n, seed=0):
            if len(self.prompts) == 3:
                raise KeyboardInterrupt
            return super().generate_with_maps(prompt, n, seed)

    kw = dict(methods=["sieve"], out_dir=str(tmp_path), vlm=vlms[0], sim_vlm=None, n_generated=6, tau=1.5,
              top_n=8, progress=False)
    first = Dies(world)
    with pytest.raises(KeyboardInterrupt):
        label(small_spec(), ["4"], world, generator=first, **kw)
    done = first.prompts[:3]
    second = CountingGenerator(world)
    rows = label(small_spec(), ["4"], world, generator=second, **kw)
    assert not set(done) & set(second.prompts)  # what was verified before the kill is not generated again
    assert any(r.extra.get("selected") for r in rows)


def test_embeddings_computed_once_however_many_methods(tmp_path, vlms):
    world = SyntheticWorld(90, 32, seed=5)
    calls = []
    vlm = vlms[0]
    original = type(vlm).encode_image

    def counting(self, images, **kw):
        calls.append(len(images))
        return original(self, images, **kw)

    kw = dict(out_dir=str(tmp_path), vlm=vlm, sim_vlm=None, generator=SyntheticGenerator(world), n_generated=4,
              progress=False)
    try:
        type(vlm).encode_image = counting
        label(small_spec(), ["4"], world, methods=["clip-dissect"], **kw)
        first = len(calls)
        label(small_spec(), ["4"], world, methods=["clip-dissect", "linex"], **kw)
    finally:
        type(vlm).encode_image = original
    assert first > 0 and len(calls) == first  # the second run, with one more method, encodes nothing


def test_vocabulary_file(tmp_path):
    p = tmp_path / "words.txt"
    p.write_text("sky\n\n# a comment\nred circle\nsky\n")
    assert read_vocabulary(str(p)) == ["sky", "red circle"]
    p.write_text("\n  \n")
    with pytest.raises(InputError, match="vocabulary file is empty"):
        read_vocabulary(str(p))


class Empty(Generator):
    name = "empty"
    prompt_template = "{}"

    def _generate(self, prompt, n, seed):
        return np.zeros((0, 8, 8, 3), np.uint8)


def test_generator_returning_nothing_is_a_clear_error(tmp_path, vlms):
    world = SyntheticWorld(60, 32, seed=6)
    with pytest.raises(InputError, match="returned no images"):
        Empty().generate("sky", 4)
    rows = label(small_spec(), ["4"], world, methods=["clip-dissect"], out_dir=str(tmp_path), vlm=vlms[0],
                 sim_vlm=None, generator=Empty(), n_generated=4, progress=False)
    assert all("returned no images" in r.extra["verify_error"] for r in rows)
    assert all("activation_rate" not in r.metrics for r in rows)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "neurcore", *args], capture_output=True, text=True, timeout=900,
                          env=env)


@pytest.mark.parametrize("case", ["empty-vocabulary", "unknown-model", "bad-weights", "not-a-pipeline"])
def test_cli_bad_input_one_line(tmp_path, case):
    args = ["label", "--layer", "conv4", "--probe-images", "40", "--rules", "none", "--out", str(tmp_path / "o"),
            "--quiet"]
    if case == "empty-vocabulary":
        (tmp_path / "v.txt").write_text("\n")
        args += ["--vocabulary", str(tmp_path / "v.txt")]
        match = "vocabulary file is empty"
    elif case == "unknown-model":
        args += ["--vlm", "ViT-Q-99"]
        match = "ViT-Q-99"
    elif case == "bad-weights":
        bad = tmp_path / "w.pt"
        torch.save({"visual.nope": torch.zeros(3)}, bad)
        args += ["--vlm", "RN50", "--vlm-weights", str(bad)]
        match = "w.pt"
    else:
        (tmp_path / "pipe").mkdir()
        args += ["--generator", f"diffusers:{tmp_path / 'pipe'}"]
        match = "pipe"
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("neurcore label: error:") and match in lines[0], res.stderr
    assert not (tmp_path / "o" / "labels.jsonl").exists()


def test_cli_real_open_clip_architecture_and_diffusers_pipeline(tmp_path):
    """The code that loads real weights is the code that runs: an open_clip architecture by name (random
    weights, none can be downloaded) as both VLMs and a diffusers pipeline from a local directory."""
    from neurcore.labels import build_tiny_pipeline

    pipe = build_tiny_pipeline(str(tmp_path / "pipe"))
    out = tmp_path / "o"
    res = _cli("label", "--layer", "conv4", "--probe-images", "48", "--vlm", "RN50", "--sim-vlm", "RN50",
               "--generator", f"diffusers:{pipe}", "--generator-steps", "2", "--generated", "3", "--tau", "1000",
               "--top-n", "3", "--rules", "dissect", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    rows = read_jsonl(out / "labels.jsonl")
    assert {r.method for r in rows} == {"clip-dissect", "linex", "sieve"}
    cd = [r for r in rows if r.method == "clip-dissect"]
    # verified on diffusers images; planted units (their activations come from concept maps, which
    # diffusers images do not have) are left unscored
    assert all(("activation_rate" in r.metrics) == (r.unit < 128) for r in cd)
    summary = json.load(open(out / "labels_summary.json"))
    assert "dissect" in summary["layers"]["conv4"]["methods"]  # Network Dissection scored beside them
    page = (out / "report" / "labels-conv4.html").read_text()
    assert (out / "report" / "labels.html").is_file()
    sources = re.findall(r"<img[^>]* src='([^']+)'", page)
    assert any("-gen-" in src for src in sources)  # the generated verification images beside the top images
    assert all((out / "report" / src).is_file() for src in sources)


def test_dissect_runs_labelling_methods_beside_the_rules(tmp_path, vlms):
    from neurcore.pipelines import dissect

    world = SyntheticWorld(80, 32, seed=8)
    out = dissect(small_spec(), ["4"], world, method="dissect", out_dir=str(tmp_path), progress=False,
                  methods=["rules", "clip-dissect"],
                  label_options={"vlm": vlms[0], "sim_vlm": None, "generator": SyntheticGenerator(world),
                                 "n_generated": 4})
    assert {r.method for r in out} == {"dissect", "clip-dissect"}
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert len(rows) == 2 * 10
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "report" / "labels.html").is_file()
    summary = json.load(open(tmp_path / "labels_summary.json"))
    assert set(summary["layers"]["4"]["methods"]) == {"dissect", "clip-dissect"}  # the rules verified too
    with pytest.raises(InputError, match="--methods"):
        dissect(small_spec(), ["4"], world, out_dir=str(tmp_path / "x"), methods=["sieve"], progress=False)


@pytest.mark.parametrize("engine", ["in-process", "ray"])
def test_verification_on_an_engine_gives_the_same_labels(tmp_path, labelled, vlms, engine):
    """Every label's verification images generated and scored as one task per prompt (shards in reverse
    order, or on a local Ray cluster of two workers): labels.jsonl is byte-identical."""
    from neurcore.distributed import InProcessEngine

    out, world, gen, _rows = labelled
    if engine == "ray":
        pytest.importorskip("ray")
        run_engine, options = "ray", {"workers": 2}
    else:
        run_engine, options = InProcessEngine(reverse=True), {}
    label(small_spec(), ["4"], world, out_dir=str(tmp_path), vlm=vlms[0], sim_vlm=vlms[1],
          generator=SyntheticGenerator(world), n_generated=8, tau=2.0, top_n=10, progress=False,
          engine=run_engine, **options)
    with open(os.path.join(out, "labels.jsonl"), "rb") as a, open(tmp_path / "labels.jsonl", "rb") as b:
        assert a.read() == b.read()
    if engine != "ray":
        generated = [c for c in run_engine.log if c["kind"] == "generate"]
        assert len(generated) == len(set(gen.prompts))  # one task per distinct prompt


def test_rows_without_an_iou_write_null(labelled):
    """Vision-language labels are scored by Activation Rate and CoSy, not IoU: their rows say "iou": null
    (not 0.0); the rule rows verified beside them keep their IoU."""
    out, _world, _gen, _rows = labelled
    with open(os.path.join(out, "labels.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert {r["method"] for r in rows if r["iou"] is None} == {"clip-dissect", "linex", "sieve"}
    assert all(isinstance(r["iou"], float) for r in rows if r["method"] == "dissect")
