"""The current fault suite run on ``lightning_regs`` as at an older commit: ``python -m tests.faults.before_fix``.

Evidence for issue 22's "every kind above has tests that failed before the fix": the suite of today, run on the code
of the commit the faults were found on (``cef299b`` unless ``--commit`` names another).

1. The current suite is collected on the current code (``pytest --collect-only``): every node id with its
   ``fault(area=..., outcome=...)``.
2. A detached ``git worktree`` of the commit is made in a temporary folder, its ``tests/`` replaced by a copy of the
   current ``tests/`` (so files the tests read from the repository, such as ``setup.cfg`` or ``examples/``, are the old
   ones too), and pytest runs there: ``import lightning_regs`` resolves to the old package (the run checks
   ``lightning_regs.__file__`` and aborts otherwise), ``tests.*`` to the current tests.
3. Names the tests import that the old code lacks are stubbed, so that every module's cases run: before pytest
   imports a fault test module, the plugin imports it itself, and on ``cannot import name X from lightning_regs.M``
   (or a missing ``lightning_regs`` submodule) it sets a stub on the old module and tries again. ``...Error`` /
   ``...Warning`` -> a new exception / warning class (the old code never raises it: ``pytest.raises`` of it fails);
   an UPPER_CASE name -> a constant whose every use as a number raises; anything else -> a class that raises
   ``NotImplementedError("X did not exist at <commit>")`` when called, instantiated or asked for an attribute. pytest
   then finds the module in ``sys.modules`` and uses it (checked, and printed).
4. Every case has a timeout (pytest-timeout, 60 s; a watchdog kills a process whose cases stop reporting) and the
   pytest process a memory limit (``RLIMIT_DATA``, 6 GB); a process that dies in a case (a hard hang killed, a crash)
   is restarted without the cases already done.
5. The results are mapped by node id. A case failed before the fix when its assertion failed (a wrong result, a
   message that does not match), when it expected an error type new since the commit (``DID NOT RAISE``, or the old
   code raised another type), when it used a stub (the feature did not exist), when the old code raised an error of
   another kind, when its module could not be collected, or when it timed out / ran out of memory; otherwise it
   passed on the old code (behaviour that was already right), and is listed.

The worktree is removed at the end, on an error or Ctrl-C too. Extra arguments go to pytest, in both runs
(``python -m tests.faults.before_fix -k mvtec``); ``--timeout 300`` (per case), ``--memory-gb 8``, ``--reasons`` (every
failed case's reason).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.faults import AREAS, OUTCOMES

DEFAULT_COMMIT = "cef299b"
CASE_TIMEOUT_S = 60
MEMORY_GB = 6.0  # RLIMIT_DATA of the pytest process on the old code (torch and lightning imported: ~1 GB)
MAX_RESTARTS = 20
MAX_IMPORT_TRIES = 100  # stubs per test module, at most
RECORD_ENV = "LIGHTNING_REGS_BEFORE_FIX_RECORD"  # the JSON-lines file the plugin appends to
SKIP_ENV = "LIGHTNING_REGS_BEFORE_FIX_SKIP"  # a JSON file: the node ids to deselect (cases done before a restart)
TREE_ENV = "LIGHTNING_REGS_BEFORE_FIX_TREE"  # where lightning_regs must come from; set: stub the names it lacks
COMMIT_ENV = "LIGHTNING_REGS_BEFORE_FIX_COMMIT"  # the old commit, named in the stubs' messages
STUB_MARK = "did not exist at"  # in every stub's NotImplementedError: "X did not exist at cef299b"
PASSED, ASSERTION, NEW_ERROR, STUB, ERROR, COLLECTION, TIMEOUT, SKIPPED = (
    "passed",
    "assertion",
    "new-error",
    "stub",
    "error",
    "collection",
    "timeout",
    "skipped",
)
FAILED_KINDS = (ASSERTION, NEW_ERROR, STUB, ERROR, COLLECTION, TIMEOUT)
HEADINGS = {
    ASSERTION: "assert failed",
    NEW_ERROR: "new error type",
    STUB: "no such feature",
    ERROR: "other error",
    COLLECTION: "collect error",
    TIMEOUT: "hang/crash/OOM",
    PASSED: "PASSED",
    SKIPPED: "skipped",
}
LEGEND = {
    ASSERTION: "an assertion failed: a wrong result, no warning, a message that does not match",
    NEW_ERROR: "pytest.raises/warns of an error type new since the commit (a stub): DID NOT RAISE, or another error",
    STUB: "the case used a name new since the commit: a stub raised NotImplementedError (the feature did not exist)",
    ERROR: "the old code raised an error the case did not expect (a crash, TypeError on a new argument, ...)",
    COLLECTION: "the case's module could not be imported on the old code, even with stubs",
    TIMEOUT: "timed out, hung (the process killed) or ran out of memory (MemoryError, the process died)",
}


# --------------------------------------------------------------------------------------------------------------------
# The pytest plugin (``-p tests.faults.before_fix``), active in the child runs only: it appends events to a JSON-lines
# file, flushed one by one, so a run killed in a case still leaves what it did. On the old code it also stubs the
# names the fault test modules import that the old code lacks (:class:`_Stubs`).


class _Recorder:
    def __init__(self, path: str, skip: set[str], stubs: _Stubs | None = None) -> None:
        self.path, self.skip, self.stubs = path, skip, stubs

    def write(self, **event: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event) + "\n")
            handle.flush()

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if not self.skip:
            return
        kept = [item for item in items if item.nodeid not in self.skip]
        deselected = [item for item in items if item.nodeid in self.skip]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = kept

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            marker = item.get_closest_marker("fault")
            if marker is not None:
                self.write(event="collected", nodeid=item.nodeid, **marker.kwargs)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.write(event="collect_error", nodeid=report.nodeid, reason=_collect_reason(report))

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if self.stubs is not None:
            self.stubs.hits.clear()
            self.stubs.expected.clear()
        self.write(event="start", nodeid=nodeid)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self.write(event="finish", nodeid=nodeid)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]):
        report = yield
        if not report.passed:
            excinfo = call.excinfo
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)
            self.write(
                event="report",
                nodeid=item.nodeid,
                when=report.when,
                outcome=report.outcome,
                exc_type=excinfo.typename if excinfo is not None else None,
                message=message.strip().splitlines()[0][:300] if message.strip() else "",
                stub_in_error=excinfo is not None and _mentions_stub(excinfo.value),
                stubs_used=sorted(set(self.stubs.hits)) if self.stubs is not None else [],
                stub_errors_expected=sorted(set(self.stubs.expected)) if self.stubs is not None else [],
            )
        elif report.when == "call":
            self.write(event="report", nodeid=item.nodeid, when="call", outcome="passed", exc_type=None, message="")
        return report


def _mentions_stub(error: BaseException) -> bool:
    """Whether a stub's ``NotImplementedError`` is the error, in its chain or in its message (``pytest.raises(...,
    match=...)`` that caught it)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if STUB_MARK in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _collect_reason(report: pytest.CollectReport) -> str:
    """The last ``E   ...`` line of a collection error (``ImportError: cannot import name 'X' from ...``)."""
    text = str(report.longrepr)
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    reason = lines[-1] if lines else (text.strip().splitlines() or [""])[-1]
    return reason[:300]


class _StubMeta(type):
    """The type of a stub for a class or function the old code lacks: calling it, or a subclass, or reading a public
    attribute of it raises ``NotImplementedError("X did not exist at <commit>")``."""

    _before_fix_hits: list[str]
    _before_fix_message: str
    _before_fix_name: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        cls._before_fix_hits.append(cls._before_fix_name)  # the stub's name, for a subclass of it too
        raise NotImplementedError(cls._before_fix_message)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):  # pytest's and inspect's probes (``__test__``, ``_pytestfixturefunction``, ...)
            raise AttributeError(name)
        cls._before_fix_hits.append(cls._before_fix_name)
        raise NotImplementedError(f"{cls._before_fix_message} (attribute {name!r})")


class _MissingConstant:
    """A constant the old code lacks: its repr works; using it as a number or a truth value raises
    ``NotImplementedError("X did not exist at <commit>")``."""

    def __init__(self, name: str, message: str, hits: list[str]) -> None:
        self._name, self._message, self._hits = name, message, hits

    def __repr__(self) -> str:
        return f"<{self._message}>"

    def _refuse(self, *args: Any) -> Any:
        self._hits.append(self._name)
        raise NotImplementedError(self._message)

    __bool__ = __int__ = __float__ = __index__ = __neg__ = __abs__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = _refuse


class _Stubs:
    """On the old code: imports each fault test module before pytest does, stubbing every name it imports from
    ``lightning_regs`` that the old code lacks (and every missing ``lightning_regs`` submodule) until it imports;
    pytest then takes the module from ``sys.modules``. Records each stub, which stubs a case used and which stubbed
    error types it expected (``pytest.raises``/``pytest.warns`` are wrapped for that)."""

    def __init__(self, recorder: _Recorder, commit: str) -> None:
        self.recorder, self.commit = recorder, commit
        self.made: set[tuple[str, str]] = set()
        self.hits: list[str] = []  # the stubs the current case used (reset at each case's start)
        self.expected: list[str] = []  # the stubbed error types the current case's pytest.raises/warns expected
        self.modules: dict[str, Any] = {}  # module name -> the module object this plugin imported
        self._wrap("raises")
        self._wrap("warns")

    def _wrap(self, name: str) -> None:
        original = getattr(pytest, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            expected = args[0] if args else kwargs.get("expected_exception", kwargs.get("expected_warning"))
            for kind in expected if isinstance(expected, tuple) else (expected,):
                if isinstance(kind, type) and getattr(kind, "_before_fix_stub", False):
                    self.expected.append(kind.__name__)
            return original(*args, **kwargs)

        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(pytest, name, wrapper)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> None:
        if file_path.suffix == ".py" and file_path.name.startswith("test_") and file_path.parent.name == "faults":
            self.preimport(file_path)

    def preimport(self, path: Path) -> None:
        import importlib

        from _pytest.pathlib import resolve_pkg_root_and_module_name

        name = resolve_pkg_root_and_module_name(path)[1]
        if name in sys.modules:
            return
        stubbed: list[str] = []
        error: BaseException | None = None
        for _ in range(MAX_IMPORT_TRIES):
            try:
                module = importlib.import_module(name)
            except ImportError as caught:  # ModuleNotFoundError included
                error = caught
                made = self._stub(caught, name)
                if made is None:
                    break
                stubbed.append(made)
            except Exception as caught:  # pytest imports it again and reports it as a collection error
                error = caught
                break
            else:
                self.modules[name] = module
                self.recorder.write(event="preimport", module=name, ok=True, stubs=stubbed)
                return
        self.recorder.write(event="preimport", module=name, ok=False, stubs=stubbed, error=repr(error)[:300])

    def _stub(self, error: ImportError, importer: str) -> str | None:
        """Stub what ``error`` says is missing; the stub's ``module.name``, or None when it is not ours to stub."""
        import re
        import types

        module_name = error.name or ""
        if isinstance(error, ModuleNotFoundError):
            if not module_name.startswith("lightning_regs.") or module_name in sys.modules:
                return None
            parent_name, _, leaf = module_name.rpartition(".")
            parent = sys.modules.get(parent_name)
            if parent is None:
                return None
            module = types.ModuleType(module_name, f"stub: {module_name} {STUB_MARK} {self.commit}")
            sys.modules[module_name] = module
            setattr(parent, leaf, module)
            return self._made(parent_name, leaf, "module", importer)
        found = re.match(r"cannot import name '([^']+)' from '([^']+)'", str(error))
        if found is None:
            return None
        name, module_name = found.groups()
        module = sys.modules.get(module_name)
        if not (module_name == "lightning_regs" or module_name.startswith("lightning_regs.")) or module is None:
            return None
        if (module_name, name) in self.made or hasattr(module, name):
            return None  # stubbed already, and still failing: give up
        message = f"{name} {STUB_MARK} {self.commit}"
        attributes = {"__module__": module_name, "__qualname__": name, "__doc__": f"stub: {message}"}
        stub: Any
        if name.endswith(("Error", "Exception")):
            kind, stub = "error", type(name, (Exception,), {**attributes, "_before_fix_stub": True})
        elif name.endswith("Warning"):
            kind, stub = "warning", type(name, (UserWarning,), {**attributes, "_before_fix_stub": True})
        elif re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            kind, stub = "constant", _MissingConstant(name, message, self.hits)
        else:
            kind = "callable"
            hooks = {"_before_fix_hits": self.hits, "_before_fix_message": message, "_before_fix_name": name}
            stub = _StubMeta(name, (), {**attributes, **hooks})
        setattr(module, name, stub)
        return self._made(module_name, name, kind, importer)

    def _made(self, module: str, name: str, kind: str, importer: str) -> str:
        self.made.add((module, name))
        self.recorder.write(event="stub", module=module, name=name, kind=kind, importer=importer)
        return f"{module}.{name}"

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Whether pytest used the module objects imported here (one event per module)."""
        used: dict[str, bool] = {}
        for item in session.items:
            module = item.getparent(pytest.Module)
            if module is not None and module.obj.__name__ in self.modules:
                used[module.obj.__name__] = module.obj is self.modules[module.obj.__name__]
        for name, same in used.items():
            self.recorder.write(event="reused", module=name, same=same)


def pytest_configure(config: pytest.Config) -> None:
    record = os.environ.get(RECORD_ENV)
    if not record:
        return
    # The old commit's pyproject.toml may not declare the marker yet (``--strict-markers``): declare it here.
    config.addinivalue_line("markers", "fault(area, outcome): a case of the fault suite (tests/faults)")
    import lightning_regs

    origin = os.path.realpath(lightning_regs.__file__)
    tree = os.environ.get(TREE_ENV)
    skip_file = os.environ.get(SKIP_ENV)
    skip = set(json.loads(Path(skip_file).read_text(encoding="utf-8"))) if skip_file else set()
    recorder = _Recorder(record, skip)
    recorder.write(event="origin", path=origin)
    print(f"[before_fix] lightning_regs imported from {origin}", flush=True)
    if tree and not origin.startswith(os.path.realpath(tree) + os.sep):
        raise pytest.UsageError(f"lightning_regs was imported from {origin}, not from the worktree {tree}; aborting.")
    if tree:
        recorder.stubs = _Stubs(recorder, os.environ.get(COMMIT_ENV, "the old commit"))
        config.pluginmanager.register(recorder.stubs, "before_fix_stubs")
    config.pluginmanager.register(recorder, "before_fix_recorder")


# --------------------------------------------------------------------------------------------------------------------
# The driver.


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a killed process
            continue
    return events


def _pytest_command(extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "tests/faults",
        "-p",
        "tests.faults.before_fix",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-q",
        *extra,
    ]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _collect_current(repo: Path, tmp: Path, pytest_args: list[str]) -> dict[str, tuple[str, str]]:
    record = tmp / "current.jsonl"
    command = _pytest_command(["--collect-only", *pytest_args])
    env = {**os.environ, RECORD_ENV: str(record)}
    env.pop(TREE_ENV, None)
    print(f"[before_fix] collecting the current suite: {shlex.join(command)}", flush=True)
    done = subprocess.run(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    events = _read(record)
    declared = {e["nodeid"]: (e["area"], e["outcome"]) for e in events if e["event"] == "collected"}
    errors = [e for e in events if e["event"] == "collect_error"]
    if errors or not declared:
        print(done.stdout[-5000:])
        raise SystemExit(f"[before_fix] the current suite does not collect cleanly (exit {done.returncode}): {errors}")
    print(f"[before_fix] {len(declared)} cases on the current code", flush=True)
    return declared


def _make_tree(repo: Path, sha: str, tree: Path) -> None:
    _git(repo, "worktree", "add", "--detach", str(tree), sha)
    shutil.rmtree(tree / "tests")
    shutil.copytree(repo / "tests", tree / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _limit_memory(gigabytes: float) -> Any:
    """A ``preexec_fn``: the child's ``RLIMIT_DATA`` (its heap and private mappings; ``RLIMIT_AS`` would count the
    ~4 GB of address space torch reserves at import)."""

    def limit() -> None:
        import resource

        size = int(gigabytes * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (size, size))

    return limit


def _run_watched(command: list[str], tree: Path, env: dict[str, str], record: Path, options: Any) -> int:
    """Run ``command``; kill its process group when ``record`` has not grown for twice the case timeout plus two
    minutes (a hang in C code that pytest-timeout's signal cannot interrupt). Its exit status."""
    silence_s = 2 * options.timeout + 120
    process = subprocess.Popen(
        command, cwd=tree, env=env, start_new_session=True, preexec_fn=_limit_memory(options.memory_gb)
    )
    last_size, last_change = -1, time.monotonic()
    try:
        while process.poll() is None:
            size = record.stat().st_size if record.exists() else 0
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            elif time.monotonic() - last_change > silence_s:
                print(f"[before_fix] no event for {silence_s:.0f} s: killing the pytest process", flush=True)
                os.killpg(process.pid, 9)
            time.sleep(1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
    return process.returncode


def _run_old(
    tree: Path, tmp: Path, sha: str, pytest_args: list[str], options: Any
) -> tuple[list[dict[str, Any]], list[str], str]:
    """Run the suite in the worktree, restarting after a process that died in a case; the events and the dead ones."""
    record, skip = tmp / "old.jsonl", tmp / "skip.json"
    command = _pytest_command(
        ["--continue-on-collection-errors", "--tb=no", f"--timeout={options.timeout:g}", *pytest_args]
    )
    env = {
        **os.environ,
        RECORD_ENV: str(record),
        TREE_ENV: str(tree),
        COMMIT_ENV: sha[:7],
        SKIP_ENV: str(skip),
        "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    shown = (
        f"cd {shlex.quote(str(tree))} && {COMMIT_ENV}={sha[:7]} PYTHONPATH={shlex.quote(env['PYTHONPATH'])} "
        f"{shlex.join(command)}  # RLIMIT_DATA {options.memory_gb:g} GB"
    )
    print(f"[before_fix] running the current suite on the old code:\n  {shown}", flush=True)
    dead: list[str] = []
    for _ in range(MAX_RESTARTS + 1):
        events = _read(record)
        finished = {e["nodeid"] for e in events if e["event"] == "finish"}
        skip.write_text(json.dumps(sorted(finished | set(dead))), encoding="utf-8")
        code = _run_watched(command, tree, env, record, options)
        events = _read(record)
        origins = {e["path"] for e in events if e["event"] == "origin"}
        if not origins or any(not o.startswith(os.path.realpath(tree) + os.sep) for o in origins):
            raise SystemExit(f"[before_fix] lightning_regs did not come from the worktree {tree}: {origins}; aborting.")
        started = [e["nodeid"] for e in events if e["event"] == "start"]
        finished = {e["nodeid"] for e in events if e["event"] == "finish"}
        unfinished = [n for n in started if n not in finished and n not in dead]
        if not unfinished:
            if code not in (0, 1, 5):
                raise SystemExit(f"[before_fix] pytest on the old code exited {code}; aborting.")
            break
        print(f"[before_fix] the process died (exit {code}) in {unfinished[-1]}; restarting without the done cases")
        dead.append(unfinished[-1])
    else:
        raise SystemExit(f"[before_fix] more than {MAX_RESTARTS} restarts; aborting.")
    return _read(record), dead, shown


def _classify(
    declared: dict[str, tuple[str, str]], events: list[dict[str, Any]], dead: list[str]
) -> dict[str, tuple[str, str]]:
    """Each declared case's kind on the old code and a one-line reason."""
    reports: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event["event"] == "report":
            reports[event["nodeid"]].append(event)
    collect_errors = {e["nodeid"]: e["reason"] for e in events if e["event"] == "collect_error"}
    result: dict[str, tuple[str, str]] = {}
    for nodeid in declared:
        failed = [r for r in reports.get(nodeid, []) if r["outcome"] == "failed"]
        if failed:
            first = failed[0]
            message, exc_type = first["message"], first["exc_type"]
            used, expected = first.get("stubs_used") or [], first.get("stub_errors_expected") or []
            timed_out = exc_type == "Failed" and message.removeprefix("Failed: ").startswith("Timeout")
            if timed_out or exc_type == "MemoryError" or "can't allocate memory" in message:
                kind = TIMEOUT
            elif used or first.get("stub_in_error"):
                kind = STUB
            elif expected:
                kind = NEW_ERROR
            elif exc_type in ("AssertionError", "Failed") and first["when"] == "call":
                kind = ASSERTION
            else:
                kind = ERROR
            where = "" if first["when"] == "call" else f" (in {first['when']})"
            if not message.startswith(f"{exc_type}:"):
                message = f"{exc_type}: {message}"
            if kind == STUB and used:
                message += f" [stub used: {', '.join(used)}]"
            elif kind == NEW_ERROR and not all(name in message for name in expected):
                message += f" [expected: {', '.join(expected)}]"
            result[nodeid] = (kind, message + where)
        elif nodeid in dead:
            result[nodeid] = (TIMEOUT, "the process died or hung past the timeout in this case")
        elif any(r["outcome"] == "skipped" for r in reports.get(nodeid, [])):
            skip = next(r for r in reports[nodeid] if r["outcome"] == "skipped")
            result[nodeid] = (SKIPPED, skip["message"])
        elif any(r["outcome"] == "passed" for r in reports.get(nodeid, [])):
            result[nodeid] = (PASSED, "")
        else:
            module = nodeid.split("::")[0]
            reason = collect_errors.get(module) or next(
                (r for n, r in collect_errors.items() if nodeid.startswith(n + "::")), None
            )
            result[nodeid] = (COLLECTION, reason or "not collected on the old code (no collection error reported)")
    return result


def _print_table(
    sha: str, declared: dict[str, tuple[str, str]], result: dict[str, tuple[str, str]], reasons: bool
) -> None:
    columns = [*FAILED_KINDS, PASSED, SKIPPED]
    counts: Counter[tuple[str, str]] = Counter()
    by_outcome: Counter[tuple[str, str]] = Counter()
    for nodeid, (area, outcome) in declared.items():
        counts[(area, result[nodeid][0])] += 1
        by_outcome[(outcome, result[nodeid][0])] += 1
    width = 16
    header = f"{'area':<14}{'cases':>7}{'FAILED before':>15}" + "".join(f"{HEADINGS[c]:>{width}}" for c in columns)
    print(f"\nThe current fault suite on lightning_regs at {sha}:\n{header}\n{'-' * len(header)}")

    def row(name: str, table: Counter[tuple[str, str]], key: str) -> None:
        values = [table[(key, c)] for c in columns]
        failed = sum(table[(key, c)] for c in FAILED_KINDS)
        print(f"{name:<14}{sum(values):>7}{failed:>15}" + "".join(f"{v:>{width}}" for v in values))

    for area in AREAS:
        if any(counts[(area, c)] for c in columns):
            row(area, counts, area)
    print("-" * len(header))
    for outcome in OUTCOMES:
        if any(by_outcome[(outcome, c)] for c in columns):
            row(f"({outcome})", by_outcome, outcome)
    total: Counter[tuple[str, str]] = Counter()
    for (_, kind), value in counts.items():
        total[("all", kind)] += value
    row("all", total, "all")
    print("\n" + "\n".join(f"  {HEADINGS[kind]:<15} {text}" for kind, text in LEGEND.items()))

    errors = Counter(
        (nodeid.split("::")[0], result[nodeid][1]) for nodeid in declared if result[nodeid][0] == COLLECTION
    )
    if errors:
        print("\nCollection errors on the old code (module: reason, cases):")
        for (module, reason), count in sorted(errors.items()):
            print(f"  {module}: {reason} ({count})")
    others = Counter(result[n][1].split(":")[0] for n in declared if result[n][0] == ERROR)
    if others:
        kinds = ", ".join(f"{kind} {count}" for kind, count in others.most_common())
        print(f"\nOther errors raised on the old code, by type: {kinds}")
    only_stub = Counter(n.split("::")[0] for n in declared if result[n][0] == STUB)
    if only_stub:
        print("\nFailed only because a stub raised NotImplementedError (the feature did not exist), by file:")
        for module, count in sorted(only_stub.items()):
            print(f"  {module}: {count}")
    if reasons:
        print("\nFailed cases and their reasons:")
        for nodeid in declared:
            if result[nodeid][0] not in (PASSED, SKIPPED, COLLECTION):
                print(f"  [{result[nodeid][0]}] {nodeid}: {result[nodeid][1]}")
    for kind, title in ((PASSED, "PASSED on the old code (did not fail before the fix)"), (SKIPPED, "Skipped")):
        listed = [n for n in declared if result[n][0] == kind]
        if not listed:
            continue
        print(f"\n{title}: {len(listed)}")
        by_file: dict[str, list[str]] = defaultdict(list)
        for nodeid in listed:
            by_file[nodeid.split("::")[0]].append(nodeid)
        for module, ids in by_file.items():
            print(f"  {module} ({len(ids)})")
            for nodeid in ids:
                area, outcome = declared[nodeid]
                note = f"  # {result[nodeid][1]}" if kind == SKIPPED else ""
                print(f"    {nodeid.split('::', 1)[1]}  [{area}/{outcome}]{note}")


def _print_stubs(events: list[dict[str, Any]]) -> None:
    """The stubs made on the old code, and whether pytest used the test modules imported with them."""
    stubs: dict[tuple[str, str], tuple[str, set[str]]] = {}
    for event in events:
        if event["event"] == "stub":
            key = (event["module"], event["name"])
            stubs.setdefault(key, (event["kind"], set()))[1].add(event["importer"].rsplit(".", 1)[-1])
    kinds = Counter(kind for kind, _ in stubs.values())
    print(f"\nStubs made on the old code: {len(stubs)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    for (module, name), (kind, importers) in sorted(stubs.items(), key=lambda item: (item[1][0], item[0])):
        print(f"  [{kind}] {module}.{name}  (first needed by {', '.join(sorted(importers))})")
    preimports = {e["module"]: e for e in events if e["event"] == "preimport"}
    failed = [e for e in preimports.values() if not e["ok"]]
    reused = {e["module"]: e["same"] for e in events if e["event"] == "reused"}
    not_reused = sorted(m for m, same in reused.items() if not same)
    print(
        f"Test modules imported by the plugin: {len(preimports)} ({len(failed)} failed even with stubs); pytest used "
        f"the same module object for {sum(reused.values())} of the {len(reused)} with collected cases"
        + (f"; NOT for {not_reused}" if not_reused else "")
    )
    for event in failed:
        print(f"  {event['module']}: {event['error']}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.before_fix", description=__doc__.splitlines()[0], add_help=True
    )
    parser.add_argument("--commit", default=DEFAULT_COMMIT, help=f"the old commit (default {DEFAULT_COMMIT})")
    parser.add_argument("--reasons", action="store_true", help="list every failed case with its reason")
    parser.add_argument(
        "--timeout", type=float, default=CASE_TIMEOUT_S, help=f"seconds per case (default {CASE_TIMEOUT_S})"
    )
    parser.add_argument(
        "--memory-gb", type=float, default=MEMORY_GB, help=f"RLIMIT_DATA of the old run (default {MEMORY_GB:g})"
    )
    options, pytest_args = parser.parse_known_args(argv)
    repo = Path(__file__).resolve().parents[2]
    sha = _git(repo, "rev-parse", "--verify", f"{options.commit}^{{commit}}")
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="lightning_regs_before_fix_"))
    tree = tmp / "tree"
    try:
        declared = _collect_current(repo, tmp, pytest_args)
        _make_tree(repo, sha, tree)
        events, dead, shown = _run_old(tree, tmp, sha, pytest_args, options)
        result = _classify(declared, events, dead)
        extra = {e["nodeid"] for e in events if e["event"] == "collected"} - set(declared)
        print(f"\n[before_fix] commit {sha} ({options.commit})")
        print(f"[before_fix] pytest command (old code):\n  {shown}")
        _print_stubs(events)
        _print_table(sha, declared, result, options.reasons)
        if extra:
            print(f"\n{len(extra)} node ids collected on the old code only (not counted): {sorted(extra)[:20]}")
        print(f"\n[before_fix] wall time {time.perf_counter() - start:.0f} s")
        return 0
    finally:
        if tree.exists():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
