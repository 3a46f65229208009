"""tpu/*.sh: exact gcloud commands under --dry-run, usage errors, and real runs against a fake gcloud.

Nothing here reaches Google Cloud: a dry run prints commands, and the non-dry runs put a fake
`gcloud` first on PATH that logs its argv (and, for `ssh --command`, can run the remote line
locally as if on two workers, to check that quoting, environment and worker prefixes survive).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPU = REPO / "tpu"
TARGET = ["--name", "my-tpu", "--zone", "us-central2-b"]
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
ZONE = ["--zone", "us-central2-b"]
# install.sh ships `git archive HEAD`: its tests need a git checkout (not an unpacked tarball).
needs_git = pytest.mark.skipif(
    subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode != 0,
    reason="not a git checkout")


def script(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run tpu/NAME.sh with a clean environment: no JAXICL_TPU_* defaults leak in from the caller."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAXICL_TPU_")}
    base["TMPDIR"] = str(cwd)
    return subprocess.run(["bash", str(TPU / f"{name}.sh"), *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def dry(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> list[list[str]]:
    """The dry-run output, each line split back into argv the way a shell would."""
    proc = script(name, "--dry-run", *args, cwd=cwd, env=env)  # first: later words may belong to others
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def remote_command(argv: list[str]) -> str:
    return argv[argv.index("--command") + 1]


def assert_bash_syntax(line: str) -> None:
    proc = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---- create ------------------------------------------------------------------------------------

def test_create_pod_slice_spot(tmp_path):
    assert dry("create", *TARGET, "--accelerator", "v4-32", "--spot", cwd=tmp_path) == [
        [*GCLOUD, "create", "my-tpu", *ZONE, "--accelerator-type", "v4-32", "--version", "tpu-ubuntu2204-base",
         "--spot"]]


@pytest.mark.parametrize("accel, version", [("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-8", "v2-alpha-tpuv5-lite"),
                                            ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_create_runtime_version_follows_accelerator(tmp_path, accel, version):
    (argv,) = dry("create", *TARGET, "--accelerator", accel, cwd=tmp_path)
    assert argv[argv.index("--version") + 1] == version
    assert argv[argv.index("--accelerator-type") + 1] == accel


def test_create_defaults_project_preemptible_and_passthrough(tmp_path):
    lines = dry("create", *TARGET, "--project", "my-proj", "--preemptible", "--version", "tpu-custom-1",
                "--", "--labels", "team=icl", "--description", "ICL vs GD", cwd=tmp_path)
    assert lines == [[*GCLOUD, "create", "my-tpu", *ZONE, "--project", "my-proj", "--accelerator-type", "v4-8",
                      "--version", "tpu-custom-1", "--preemptible", "--labels", "team=icl",
                      "--description", "ICL vs GD"]]


def test_create_reads_environment_defaults(tmp_path):
    env = {"JAXICL_TPU_NAME": "env-tpu", "JAXICL_TPU_ZONE": "europe-west4-a", "JAXICL_TPU_ACCELERATOR": "v6e-8"}
    (argv,) = dry("create", cwd=tmp_path, env=env)
    assert argv[:8] == [*GCLOUD, "create", "env-tpu", "--zone", "europe-west4-a"]
    assert "v6e-8" in argv


@pytest.mark.parametrize("args, message", [
    (["--spot", "--preemptible"], "exclude each other"),
    (["--accelerator", "tpu-8"], "bad accelerator type"),
    (["--accelerator"], "needs a value"),
    (["--bogus"], "unknown argument"),
])
def test_create_rejects_bad_arguments(tmp_path, args, message):
    proc = script("create", *TARGET, *args, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "usage: tpu/create.sh" in proc.stderr
    assert proc.stdout == ""


# ---- usage errors shared by every script -------------------------------------------------------

EXTRA = {"create": [], "install": [], "run": ["icl_accuracy"], "fetch": ["--run-dir", "runs/x"], "delete": []}


@pytest.mark.parametrize("name", sorted(EXTRA))
@pytest.mark.parametrize("missing", ["--name", "--zone"])
def test_missing_name_or_zone_is_a_usage_error(tmp_path, name, missing):
    target = {"--name": "my-tpu", "--zone": "us-central2-b"}
    del target[missing]
    args = [w for kv in target.items() for w in kv]
    proc = script(name, "--dry-run", *args, *EXTRA[name], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"missing {missing}" in proc.stderr and f"usage: tpu/{name}.sh" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("name", sorted(EXTRA))
@pytest.mark.parametrize("bad", [["--name", "My_TPU"], ["--zone", "central"], ["--project", "Bad Project"]])
def test_malformed_target_is_a_usage_error(tmp_path, name, bad):
    args = dict(zip(TARGET[::2], TARGET[1::2]))
    args[bad[0]] = bad[1]
    proc = script(name, "--dry-run", *[w for kv in args.items() for w in kv], *EXTRA[name], cwd=tmp_path)
    assert proc.returncode == 2 and "usage:" in proc.stderr


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_help_exits_zero(tmp_path, name):
    proc = script(name, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: tpu/{name}.sh")


def test_scripts_share_common_and_are_strict():
    for path in TPU.glob("*.sh"):
        text = path.read_text()
        if path.name != "common.sh":
            assert "set -euo pipefail" in text, path
            assert 'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"' in text, path
            assert not re.search(r"^\s*(run\s+)?gcloud\b", text, re.M), f"{path}: build argv with gcloud_tpu"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path


# ---- install -----------------------------------------------------------------------------------

@needs_git
def test_install_tarball(tmp_path):
    stage = tmp_path / "jaxicl-tpu-my-tpu"
    lines = dry("install", *TARGET, cwd=tmp_path)
    assert lines[:3] == [
        ["mkdir", "-p", str(stage)],
        ["git", "-C", str(REPO), "archive", "--format=tar.gz", "-o", str(stage / "jaxicl.tar.gz"), "HEAD"],
        [*GCLOUD, "scp", str(stage / "jaxicl.tar.gz"), "my-tpu:", *ZONE, "--worker=all"],
    ]
    ssh = lines[3]
    assert ssh[:10] == [*GCLOUD, "ssh", "my-tpu", *ZONE, "--worker=all", "--command"] and len(lines) == 4
    remote = remote_command(ssh)
    assert_bash_syntax(remote)
    assert remote.startswith("set -e; command -v python3.11 >/dev/null || { sudo apt-get update")
    assert "tar -xzf jaxicl.tar.gz -C jaxicl" in remote
    assert "python3.11 -m venv $HOME/jaxicl-venv" in remote
    assert remote.endswith("cd jaxicl && $HOME/jaxicl-venv/bin/python -m pip install -q -e '.[tpu]'")


@needs_git
def test_install_with_data_and_ref(tmp_path):
    data = tmp_path / "my data"
    data.mkdir()
    stage = tmp_path / "jaxicl-tpu-my-tpu"
    lines = dry("install", *TARGET, "--data", str(data), "--ref", "HEAD~0", "--python", "python3.12", cwd=tmp_path)
    assert lines[1][-1] == "HEAD~0"
    assert lines[2] == ["tar", "-czf", str(stage / "jaxicl-data.tar.gz"), "-C", str(data), "."]
    assert lines[3] == [*GCLOUD, "scp", str(stage / "jaxicl.tar.gz"), str(stage / "jaxicl-data.tar.gz"), "my-tpu:",
                        *ZONE, "--worker=all"]
    remote = remote_command(lines[4])
    assert "tar -xzf jaxicl-data.tar.gz -C jaxicl-data" in remote and "python3.12 -m venv" in remote


def test_install_git_clone(tmp_path):
    lines = dry("install", *TARGET, "--git", "https://github.com/example/jaxicl.git", "--ref", "main",
                "--project", "my-proj", cwd=tmp_path)
    assert len(lines) == 1  # nothing to build or copy
    assert lines[0][:11] == [*GCLOUD, "ssh", "my-tpu", *ZONE, "--project", "my-proj", "--worker=all"]
    remote = remote_command(lines[0])
    assert_bash_syntax(remote)
    assert "git clone -q --depth 1 --branch main https://github.com/example/jaxicl.git jaxicl" in remote
    assert "git -C jaxicl fetch -q --depth 1 origin main" in remote


@needs_git
@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/dir"], "no such directory"),
    (["--ref", "no-such-ref-xyz"], "not a commit"),
    (["--python", "python3; rm -rf ~"], "bad --python"),
])
def test_install_rejects_bad_arguments(tmp_path, args, message):
    proc = script("install", *TARGET, *args, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr


# ---- run ---------------------------------------------------------------------------------------

MODULE_ARGS = ["--tasks", "sst2,mr", "--out", "runs/my run", "--note", "it's \"quoted\" $HOME", "--n-eval", "100"]


def split_run_line(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """(gcloud argv, remote line, local tail) of run.sh's `gcloud ... 2>&1 | tee -a LOG` line."""
    cut = argv.index("2>&1")
    return argv[:cut], remote_command(argv[:cut]), argv[cut:]


def remote_program(remote: str) -> list[str]:
    """The words after `env` in the remote line, up to the worker-prefix pipe, as a shell splits them."""
    program = remote.split(" && env ", 1)[1].rsplit(" 2>&1 | sed -u ", 1)[0]
    return shlex.split(program)


def test_run_passes_module_and_args_to_every_worker(tmp_path):
    lines = dry("run", *TARGET, "--log", "logs/a.log", "experiments.icl_accuracy", *MODULE_ARGS, cwd=tmp_path)
    assert lines[0] == ["mkdir", "-p", "logs"]
    gcloud, remote, tail = split_run_line(lines[1])
    assert gcloud[:10] == [*GCLOUD, "ssh", "my-tpu", *ZONE, "--worker=all", "--command"]
    assert tail == ["2>&1", "|", "tee", "-a", "logs/a.log"]
    assert len(lines) == 2
    assert_bash_syntax(remote)
    assert remote.startswith("set -o pipefail; cd jaxicl && W=$(curl ")
    assert remote.endswith(' 2>&1 | sed -u "s/^/[worker $W] /"')
    assert remote_program(remote) == [
        "PYTHONUNBUFFERED=1", "JAXICL_DISTRIBUTED=1", "JAX_COMPILATION_CACHE_DIR=$HOME/.cache/jaxicl/jax-compilation",
        "$HOME/jaxicl-venv/bin/python", "-m", "experiments.icl_accuracy", *MODULE_ARGS]


def test_run_env_data_and_bare_module_name(tmp_path):
    lines = dry("run", *TARGET, "--data", "--env", "HF_TOKEN=abc", "--env", "NOTE=two words", "--log", "x.log",
                "bench_forward", "--help", "--dry-run", cwd=tmp_path)
    program = remote_program(split_run_line(lines[1])[1])
    assert program[3:] == ["JAXICL_DATA_DIR=$HOME/jaxicl-data", "HF_TOKEN=abc", "NOTE=two words",
                           "$HOME/jaxicl-venv/bin/python", "-m", "experiments.bench_forward", "--help", "--dry-run"]
    assert lines[0] == ["mkdir", "-p", "."]


def test_run_default_log_name(tmp_path):
    lines = dry("run", *TARGET, "jaxicl.cli", "eval", cwd=tmp_path)
    assert lines[0] == ["mkdir", "-p", "runs/tpu/my-tpu"]
    assert re.fullmatch(r"runs/tpu/my-tpu/run-\d{8}T\d{6}Z\.log", lines[1][-1])
    assert remote_program(split_run_line(lines[1])[1])[-3:] == ["-m", "jaxicl.cli", "eval"]


@pytest.mark.parametrize("args, message", [
    ([], "missing MODULE"),
    (["--"], "missing MODULE"),
    (["experiments.x;rm"], "bad module name"),
    (["--env", "1X=2", "m"], "KEY=VALUE"),
    (["--env", "NOEQUALS", "m"], "KEY=VALUE"),
])
def test_run_rejects_bad_arguments(tmp_path, args, message):
    proc = script("run", "--dry-run", *TARGET, *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "usage: tpu/run.sh" in proc.stderr


# ---- fetch and delete --------------------------------------------------------------------------

def test_fetch_from_worker_zero(tmp_path):
    assert dry("fetch", *TARGET, "--run-dir", "runs/icl_accuracy/", cwd=tmp_path) == [
        ["mkdir", "-p", "runs/tpu/my-tpu"],
        [*GCLOUD, "scp", "--recurse", "my-tpu:jaxicl/runs/icl_accuracy", "runs/tpu/my-tpu", *ZONE, "--worker=0"]]
    lines = dry("fetch", *TARGET, "--run-dir", "/mnt/out", "--dest", "local dir", cwd=tmp_path)
    assert lines[1][6:8] == ["my-tpu:/mnt/out", "local dir"]


@pytest.mark.parametrize("args", [[], ["--run-dir", "runs/with space"], ["--run-dir", "runs/$(x)"]])
def test_fetch_rejects_bad_run_dir(tmp_path, args):
    proc = script("fetch", "--dry-run", *TARGET, *args, cwd=tmp_path)
    assert proc.returncode == 2 and "--run-dir" in proc.stderr


def test_delete(tmp_path):
    assert dry("delete", *TARGET, cwd=tmp_path) == [[*GCLOUD, "delete", "my-tpu", *ZONE]]
    assert dry("delete", *TARGET, "--yes", cwd=tmp_path) == [[*GCLOUD, "delete", "my-tpu", *ZONE, "--quiet"]]


# ---- non-dry runs against a fake gcloud --------------------------------------------------------

FAKE_GCLOUD = """#!{python}
import json, os, subprocess, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(["gcloud", *argv]) + "\\n")
if os.environ.get("FAKE_HOME") and "--command" in argv:  # play every worker, like --worker=all
    line = argv[argv.index("--command") + 1]
    procs = [subprocess.Popen(["bash", "-c", line], cwd=os.environ["FAKE_HOME"],
                              env=dict(os.environ, HOME=os.environ["FAKE_HOME"], FAKE_WORKER=str(w)))
             for w in range(2)]
    sys.exit(max(p.wait() for p in procs))
"""

ECHO_MODULE = """import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in
      ("JAXICL_DISTRIBUTED", "JAX_COMPILATION_CACHE_DIR", "JAXICL_DATA_DIR", "NOTE", "PYTHONUNBUFFERED")}}))
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


@pytest.fixture
def fake_gcloud(tmp_path) -> dict[str, str]:
    """A PATH whose gcloud logs argv to FAKE_GCLOUD_LOG; `curl` answers with the fake worker number."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", FAKE_GCLOUD.format(python=sys.executable)),
                       ("curl", '#!/bin/sh\necho "$FAKE_WORKER"\n')):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log")}


def gcloud_calls(env: dict[str, str]) -> list[list[str]]:
    log = Path(env["FAKE_GCLOUD_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("name, args", [
    ("create", [*TARGET, "--accelerator", "v5litepod-8", "--spot"]),
    ("fetch", [*TARGET, "--run-dir", "runs/icl_accuracy"]),
    ("delete", [*TARGET, "--yes"]),
])
def test_real_run_makes_the_dry_run_calls(tmp_path, fake_gcloud, name, args):
    expected = [argv for argv in dry(name, *args, cwd=tmp_path) if argv[0] == "gcloud"]
    proc = script(name, *args, cwd=tmp_path, env=fake_gcloud)
    assert proc.returncode == 0, proc.stderr
    assert gcloud_calls(fake_gcloud) == expected


@needs_git
def test_real_install_builds_tarballs_and_calls_gcloud(tmp_path, fake_gcloud):
    data = tmp_path / "data"
    (data / "sst2").mkdir(parents=True)
    (data / "sst2" / "train.jsonl").write_text('{"text": "x", "label": 0}\n')
    args = [*TARGET, "--data", str(data)]
    expected = [argv for argv in dry("install", *args, cwd=tmp_path) if argv[0] == "gcloud"]
    proc = script("install", *args, cwd=tmp_path, env=fake_gcloud)
    assert proc.returncode == 0, proc.stderr
    assert gcloud_calls(fake_gcloud) == expected
    stage = tmp_path / "jaxicl-tpu-my-tpu"
    listing = subprocess.run(["tar", "-tzf", stage / "jaxicl.tar.gz"], capture_output=True, text=True).stdout
    assert {"pyproject.toml", "jaxicl/__init__.py"} <= set(listing.splitlines())  # HEAD, as committed
    listing = subprocess.run(["tar", "-tzf", stage / "jaxicl-data.tar.gz"], capture_output=True, text=True).stdout
    assert "./sst2/train.jsonl" in listing.splitlines()


@pytest.fixture
def fake_home(tmp_path) -> Path:
    """A worker's home after install: ~/jaxicl/experiments/echo_args.py and ~/jaxicl-venv/bin/python."""
    home = tmp_path / "home"
    (home / "jaxicl" / "experiments").mkdir(parents=True)
    (home / "jaxicl" / "experiments" / "echo_args.py").write_text(ECHO_MODULE)
    (home / "jaxicl-venv" / "bin").mkdir(parents=True)
    (home / "jaxicl-venv" / "bin" / "python").symlink_to(sys.executable)
    return home


def test_real_run_streams_prefixed_worker_output_to_the_log(tmp_path, fake_gcloud, fake_home):
    env = {**fake_gcloud, "FAKE_HOME": str(fake_home)}
    args = [*TARGET, "--data", "--env", "NOTE=two words", "--log", "logs/run.log", "echo_args", *MODULE_ARGS]
    proc = script("run", *args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    (call,) = gcloud_calls(fake_gcloud)
    assert call == split_run_line(dry("run", *args, cwd=tmp_path)[1])[0]
    log = (tmp_path / "logs" / "run.log").read_text()
    assert log == proc.stdout  # tee: the terminal and the file see the same stream
    by_worker = {}
    for line in log.splitlines():
        prefix, payload = re.fullmatch(r"\[worker (\d+)\] (.*)", line).groups()
        by_worker[prefix] = json.loads(payload)
    assert sorted(by_worker) == ["0", "1"]
    for out in by_worker.values():
        assert out["argv"] == MODULE_ARGS
        assert out["env"] == {"JAXICL_DISTRIBUTED": "1", "PYTHONUNBUFFERED": "1", "NOTE": "two words",
                              "JAX_COMPILATION_CACHE_DIR": f"{fake_home}/.cache/jaxicl/jax-compilation",
                              "JAXICL_DATA_DIR": f"{fake_home}/jaxicl-data"}


def test_real_run_reports_a_failing_module(tmp_path, fake_gcloud, fake_home):
    env = {**fake_gcloud, "FAKE_HOME": str(fake_home), "EXIT_CODE": "3"}
    proc = script("run", *TARGET, "--log", "run.log", "echo_args", cwd=tmp_path, env=env)
    assert proc.returncode == 3  # through the worker's sed pipe, gcloud and the local tee
    assert "[worker 0] " in (tmp_path / "run.log").read_text()
