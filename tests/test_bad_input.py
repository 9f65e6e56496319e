"""Fault 9: a corpus of bad study/benchmark files and CLI calls (issue 7).

Each case goes through the real CLI (click's CliRunner, in this process) and must:
- exit 2 with ONE message (`error: <field>: got <value>. <fix>`), naming the field path and the fix,
  no traceback;
- start no Ray work: `ray.init` is a tripwire (tests/conftest.py `ray_tripwire`, which also hides the
  session's Ray, if one is up, from the harness) that is never reached, and no `ray_results` folder appears;
- write nothing: no database file, no dashboards, nothing new in the working folder.

The files live in tests/bad_inputs/, each with its expectation in a header comment
(`# expect: FIELD | FIX`); the few generated at run time (huge, binary) are built in the test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "bad_inputs"


def expectation(path: Path) -> tuple[str, str]:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("# expect: "):
            field, _, fix = line.removeprefix("# expect: ").partition(" | ")
            return field, fix
    return path.name, "empty"  # empty.yaml, only_comments.yaml


@pytest.fixture
def sandbox(tmp_path, monkeypatch, ray_tripwire):
    """A working folder to run the CLI in, Ray made untouchable, and a check that nothing was written."""
    # "impossible resources" must not depend on the machine: pretend there is no GPU.
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    assert not ray_tripwire, "bad input tried to start Ray"


def invoke(args: list[str]):
    from click.testing import CliRunner

    from harness.cli import main

    return CliRunner().invoke(main, args)


def assert_refused(res, field: str, fix: str, work: Path, before: set[str]) -> str:
    out = res.output
    assert res.exit_code == 2, f"exit {res.exit_code}:\n{out}\n{res.exception!r}"
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, out  # one message ...
    line = errors[0]
    assert field in line and fix in line, f"want {field!r} and {fix!r} in:\n{line}"  # ... with the field and the fix
    assert set(os.listdir(work)) == before, f"wrote {set(os.listdir(work)) - before}"  # nothing written
    assert not (work / "ray_results").exists() and not (work / "results.db").exists()
    return line


def copy_in(name: str, work: Path) -> Path:
    return Path(shutil.copy(CORPUS / name, work / name))


STUDIES = sorted(p.name for p in CORPUS.glob("*.yaml") if not p.name.startswith("bench_"))
GRIDS = sorted(p.name for p in CORPUS.glob("bench_*.yaml"))


def test_corpus_is_big_enough():
    assert len(STUDIES) + len(GRIDS) + len(CLI_CALLS) >= 25


@pytest.mark.parametrize("name", STUDIES)
def test_bad_study_file(name, sandbox):
    """`harness sweep --validate FILE` and `harness sweep FILE` both refuse it, the field path prefixed by the file."""
    path = copy_in(name, sandbox)
    field, fix = expectation(path)
    before = set(os.listdir(sandbox))
    for args in (["sweep", "--validate", name], ["sweep", name, "--db", "sqlite:///results.db"]):
        line = assert_refused(invoke(args), field, fix, sandbox, before)
        if field != name:  # a field inside the file: "<file>: <field path>"
            assert f"{name}: {field}" in line, line


@pytest.mark.parametrize("name", GRIDS)
def test_bad_benchmark_file(name, sandbox):
    path = copy_in(name, sandbox)
    field, fix = expectation(path)
    before = set(os.listdir(sandbox))
    assert_refused(invoke(["benchmark", name, "--db", "sqlite:///results.db", "--out", "dash"]), field, fix, sandbox, before)


def test_huge_and_binary_files(sandbox):
    """A file far beyond any study's size is refused before it is parsed; random bytes are not a study."""
    (sandbox / "huge.yaml").write_text("name: x\n" + "# padding\n" * 100_000)
    (sandbox / "binary.yaml").write_bytes(bytes(range(256)) * 64)
    before = set(os.listdir(sandbox))
    assert_refused(invoke(["sweep", "huge.yaml", "--db", "sqlite:///results.db"]), "huge.yaml", "too large", sandbox, before)
    assert_refused(invoke(["benchmark", "huge.yaml", "--db", "sqlite:///results.db"]), "huge.yaml", "too large", sandbox, before)
    res = invoke(["sweep", "binary.yaml", "--db", "sqlite:///results.db"])
    line = assert_refused(res, "binary.yaml", "Fix the YAML syntax", sandbox, before)
    assert "got 'not YAML'" in line and "special characters are not allowed" in line, line  # says why


def test_directory_and_foreign_database(sandbox):
    """A folder where a file should be; a --db that is not a harness database (left untouched)."""
    import sqlite3

    (sandbox / "adir.yaml").mkdir()
    foreign = sandbox / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE runs (x)")
    con.commit()
    con.close()
    study = copy_in("study_typo_top.yaml", sandbox)
    study.write_text(study.read_text().replace("trails:", "trials:"))  # a valid study
    data = foreign.read_bytes()
    before = set(os.listdir(sandbox))
    assert_refused(invoke(["sweep", "adir.yaml"]), "adir.yaml", "No such file", sandbox, before)
    assert_refused(invoke(["sweep", study.name, "--db", f"sqlite:///{foreign}"]), "--db", "not a harness database",
                   sandbox, before)
    assert_refused(invoke(["report", "--db", f"sqlite:///{foreign}", "--out", "dash"]), "--db", "harness", sandbox, before)
    assert foreign.read_bytes() == data


# CLI calls: (args, field, fix). Each runs in the sandbox; "study.yaml" there is a valid study.
CLI_CALLS = [
    (["benchmark", "--models", "resnet5O", "--db", "sqlite:///results.db"], "--models", "Did you mean 'resnet50'"),
    (["benchmark", "--models", ",", "--db", "sqlite:///results.db"], "--models", "at least one name"),
    (["benchmark", "--recipes", "naive,fittted", "--db", "sqlite:///results.db"], "--recipes", "Did you mean 'fitted'"),
    (["benchmark", "--seeds", "0", "--db", "sqlite:///results.db"], "--seeds", "at least 1 seed"),
    (["benchmark", "--epochs", "0", "--db", "sqlite:///results.db"], "--epochs", "at least 1 epoch"),
    (["benchmark", "--set", "lr", "--db", "sqlite:///results.db"], "--set", "KEY=VALUE"),
    (["benchmark", "nonexistent/grid.yaml", "--db", "sqlite:///results.db"], "nonexistent/grid.yaml", "No such file"),
    (["benchmark", "--db", "mysql+nope://x"], "--db", "use sqlite:///results.db or postgresql://user:password@host/db"),
    (["report", "--db", "sqlite:///missing.db"], "--db", "No such database yet"),
    (["report", "--db", "not a url"], "--db", "Not a database URL"),
    (["sweep", "missing.yaml"], "missing.yaml", "No such file"),
    (["sweep", "study.yaml", "--resume", "--db", "sqlite:///results.db"], "name", "No sweep of that name"),
    (["sweep", "study.yaml", "--max-failures", "-1", "--db", "sqlite:///results.db"], "--max-failures", "0"),
    (["sweep", "study.yaml", "--db", "sqlite:///adir"], "--db", "folder"),
    # every option's error in harness's words (issue 36), not click's
    (["doctor", "--model", "resnet18", "--overfit-steps", "0"], "--overfit-steps", "Use at least 1 steps"),
    (["doctor", "--model", "resnet18", "--lr-steps", "20000"], "--lr-steps", "Use at most 10000 steps"),
    (["export", "0", "--out", "m.pth"], "RUN_ID", "run ids count from 1"),
    (["export", "one", "--out", "m.pth"], "RUN_ID", "Not a whole number"),
    (["ablate", "--model", "resnet18", "--mode", "sideways"], "--mode", "Use one of add, drop, both"),
    (["train", "--model", "resnet18", "--seed", "x"], "--seed", "Not a whole number"),
]


@pytest.mark.parametrize("args,field,fix", CLI_CALLS, ids=[" ".join(c[0][:3]) for c in CLI_CALLS])
def test_bad_cli_call(args, field, fix, sandbox):
    study = copy_in("study_typo_top.yaml", sandbox)
    study.rename(sandbox / "study.yaml")
    (sandbox / "study.yaml").write_text((sandbox / "study.yaml").read_text().replace("trails:", "trials:"))
    (sandbox / "adir").mkdir()
    before = set(os.listdir(sandbox))
    assert_refused(invoke(args), field, fix, sandbox, before)
