"""--engine ray: byte-identical results to the local engine on a local Ray cluster and on a two-node
cluster started here (ray.cluster_utils.Cluster), with workers killed mid-task, a driver killed and
re-run, and the errors for an unreachable address and a missing extra."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("torch")
ray = pytest.importorskip("ray")

from neurcore import dissect
from neurcore.cli import main

_SMALL = {"layers": ["conv4", "conv3"], "method": "beam", "probe_images": 300, "checkpoint_images": 64,
          "report": False, "progress": False}
_CLI = ["--layer", "conv4", "--layer", "conv3", "--method", "beam", "--probe-images", "300",
        "--checkpoint-images", "64", "--quiet"]


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _calls(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "engine.json")) as f:
        return json.load(f)["calls"]


@pytest.fixture(scope="module")
def local_results(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("local")
    dissect(out_dir=str(out), **_SMALL)
    return _read(out / "results.jsonl")


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each, on this machine."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def test_a_local_ray_cluster_of_two_workers_gives_byte_identical_results(tmp_path, local_results):
    dissect(out_dir=str(tmp_path), engine="ray", workers=2, **_SMALL)
    assert _read(tmp_path / "results.jsonl") == local_results
    calls = _calls(tmp_path)
    units = {}
    for line in local_results.splitlines():
        r = json.loads(line)
        units[r["layer"]] = units.get(r["layer"], 0) + 1
    # 300 images in shards of 64: five shards a pass; each layer's units in parts of 64
    assert [sum(c["kind"] == k for c in calls) for k in ("pass 1", "pass 2", "search")] == \
        [5, 5, sum(-(-n // 64) for n in units.values())]
    assert len({c["pid"] for c in calls if c["kind"] == "pass 1"}) == 2
    assert not ray.is_initialized()  # the engine stopped the cluster it started


def test_a_two_node_cluster_gives_byte_identical_results_and_uses_both_nodes(tmp_path, cluster, local_results):
    dissect(out_dir=str(tmp_path), engine="ray", ray_address=cluster.address, **_SMALL)
    assert _read(tmp_path / "results.jsonl") == local_results
    calls = _calls(tmp_path)
    assert len({c["node"] for c in calls if c["kind"] == "pass 1"}) == 2
    assert len({c["node"] for c in calls if c["kind"] == "search"}) == 2


def _ray_processes(title: str) -> list[int]:
    """Pids of the Ray worker processes whose title (``ray::<what it runs>``) is ``title``."""
    pids = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.strip() == title:
            pids.append(int(path.split("/")[2]))
    return pids


def test_workers_killed_while_they_run_leave_the_results_unchanged(tmp_path, cluster, local_results):
    """One model actor killed while it runs a pass-1 shard, and one worker killed while it runs a search
    task (found by its process title, killed by pid): the shard goes again on a new actor, Ray retries
    the task, and the results are byte-identical."""
    killed: dict[str, int] = {}
    done = threading.Event()

    def killer():
        while not done.is_set() and len(killed) < 2:
            for title in ("ray::_ModelWorker.run", "ray::neurcore search"):
                if title not in killed:
                    for pid in _ray_processes(title)[:1]:
                        os.kill(pid, signal.SIGKILL)
                        killed[title] = pid
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        dissect(out_dir=str(tmp_path), engine="ray", ray_address=cluster.address,
                **{**_SMALL, "units_per_part": 128})  # longer searches, easier to catch running
    finally:
        done.set()
        thread.join()
    assert set(killed) == {"ray::_ModelWorker.run", "ray::neurcore search"}
    assert _read(tmp_path / "results.jsonl") == local_results
    assert all(c["pid"] not in killed.values() for c in _calls(tmp_path))  # every result came from a survivor


def test_a_killed_driver_rerun_resumes_without_redoing_finished_shards(tmp_path, cluster, local_results):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "neurcore", "dissect", *_CLI, "--probe-images", "640", "--engine", "ray",
           "--ray-address", cluster.address, "--out", str(out)]
    want_out = tmp_path / "local"
    dissect(out_dir=str(want_out), **{**_SMALL, "probe_images": 640})
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "layers" / "shards-pass1.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with open(state) as f:
                if len(json.load(f)["merged"]) >= 3:
                    break
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, "the driver ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(state) as f:
        merged = json.load(f)["merged"]
    assert 3 <= len(merged) < 10  # 640 images: ten shards of 64
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    assert _read(out / "results.jsonl") == _read(want_out / "results.jsonl")
    redone = [int(c["key"].split(",")[0].removeprefix("start=")) for c in _calls(out) if c["kind"] == "pass 1"]
    assert sorted(redone) == sorted(set(range(0, 640, 64)) - set(merged))


def test_search_npz_on_ray_equals_local(tmp_path, cluster):
    from neurcore.distributed import RayEngine
    from neurcore.rules import search_npz

    rng = np.random.default_rng(0)
    concepts = rng.random((12, 40, 9, 9)) < 0.2
    units = rng.random((23, 40, 9, 9)) < 0.15
    np.savez(tmp_path / "C.npz", masks=concepts, names=np.array([f"c{i}" for i in range(12)]))
    np.savez(tmp_path / "U.npz", masks=units)
    for method in ("dissect", "beam", "optimal"):
        local = search_npz(tmp_path / "C.npz", tmp_path / "U.npz", tmp_path / f"{method}-local.jsonl",
                           method=method, length=2)
        with RayEngine(cluster.address) as engine:
            on_ray = search_npz(tmp_path / "C.npz", tmp_path / "U.npz", tmp_path / f"{method}-ray.jsonl",
                                method=method, length=2, engine=engine, units_per_task=5)
        assert [r.unit for r in on_ray] == list(range(23))
        assert _read(tmp_path / f"{method}-local.jsonl") == _read(tmp_path / f"{method}-ray.jsonl"), method
        assert len(local) == 23
    # the same through the command line
    assert main(["search", "--concepts", str(tmp_path / "C.npz"), "--units", str(tmp_path / "U.npz"),
                 "--method", "optimal", "--length", "2", "--engine", "ray", "--ray-address", cluster.address,
                 "--out", str(tmp_path / "cli.jsonl")]) == 0
    assert _read(tmp_path / "cli.jsonl") == _read(tmp_path / "optimal-local.jsonl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_address_fails_in_seconds_naming_it(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "neurcore", "dissect", "--layer", "conv4", "--engine", "ray",
                          "--ray-address", address, "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "no Ray cluster answers" in lines[0]
    assert time.perf_counter() - t0 < 30  # the interpreter and imports included
    assert not (tmp_path / "x" / "layers").exists()


def test_engine_ray_without_the_extra_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    code = main(["dissect", "--layer", "conv4", "--engine", "ray", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'neurcore[distributed]'" in err[0]


def test_the_local_engine_never_imports_ray(tmp_path):
    code = ("import sys, numpy as np\n"
            "from neurcore.rules import search_npz\n"
            "from neurcore import distributed, dissect\n"
            "np.savez('C.npz', masks=np.eye(4, 16, dtype=bool).reshape(4, 4, 2, 2), names=np.array(list('abcd')))\n"
            "np.savez('U.npz', masks=np.eye(4, 16, dtype=bool).reshape(4, 4, 2, 2))\n"
            "search_npz('C.npz', 'U.npz', 'R.jsonl')\n"
            "assert distributed.open_engine('local') is None\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)
