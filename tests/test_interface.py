"""The engine's typed boundary (pipelines/interface.py): the real classes and the test fakes (tests/fakes.py) satisfy
the same Protocols, so a fake cannot drift from the engine that ui/ and api/ really call.

``isinstance`` with a ``runtime_checkable`` Protocol checks names only; ``conformance_problems`` also compares each
method's parameters with the Protocol's: the same names in the same places, of a compatible kind, with the same
defaults. An implementation may take extra parameters when they are optional.
"""

from __future__ import annotations

import inspect
from typing import Any, Generic, Protocol

import pytest
from fakes import FakeJob, FakeManager, FakeRegistry
from manager_fixtures import make_manager

from pipelines.interface import Engine, JobHandle
from pipelines.jobs import Job, JobQueue
from pipelines.manager import PipelineManager
from pipelines.request import GenerationRequest
from pipelines.settings import Settings

P = inspect.Parameter
POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
VARIADIC = (P.VAR_POSITIONAL, P.VAR_KEYWORD)
MISSING = object()


# --- the checker ------------------------------------------------------------------------------------------------
def protocol_members(protocol: type) -> tuple[set[str], dict[str, Any]]:
    """The Protocol's data attributes (annotated names) and its methods and properties (name → member)."""
    attributes: set[str] = set()
    members: dict[str, Any] = {}
    for klass in reversed(protocol.__mro__):
        if klass in (object, Protocol, Generic):
            continue
        attributes |= set(vars(klass).get("__annotations__", {}))
        members |= {name: value for name, value in vars(klass).items()
                    if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))}
    return attributes, members


def signature_problems(expected: Any, actual: Any) -> list[str]:
    """How the bound method ``actual`` cannot be called as the Protocol's function ``expected`` is."""
    wanted = list(inspect.signature(expected).parameters.values())[1:]  # without self
    have = inspect.signature(actual).parameters
    positional = [p for p in have.values() if p.kind in POSITIONAL]
    problems, matched = [], set()
    for index, want in enumerate(wanted):
        if want.kind in VARIADIC:
            got = next((p for p in have.values() if p.kind == want.kind), None)
        elif want.kind == P.POSITIONAL_ONLY:  # passed by place only
            got = positional[index] if index < len(positional) else None
        elif want.kind == P.POSITIONAL_OR_KEYWORD:  # passed by place or by name: both must match
            got = positional[index] if index < len(positional) else None
            got = got if got is not None and got.name == want.name and got.kind == want.kind else None
        else:  # keyword-only: passed by name
            got = have.get(want.name)
            got = got if got is not None and got.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY) else None
        if got is None:
            problems.append(f"parameter {want.name!r} is missing, renamed, moved or of another kind")
            continue
        matched.add(got.name)
        if want.default is not P.empty and got.default is P.empty:
            problems.append(f"parameter {want.name!r} has no default (the Protocol's: {want.default!r})")
        elif want.default is not P.empty and got.default != want.default:
            problems.append(f"parameter {want.name!r} defaults to {got.default!r}, not {want.default!r}")
    problems += [f"extra parameter {p.name!r} has no default" for p in have.values()
                 if p.name not in matched and p.kind not in VARIADIC and p.default is P.empty]
    return problems


def conformance_problems(protocol: type, obj: Any) -> list[str]:
    """What the instance ``obj`` lacks or gets wrong against ``protocol`` ([] when it conforms)."""
    where = type(obj).__name__
    attributes, members = protocol_members(protocol)
    problems = [f"{where}.{name}: missing" for name in sorted(attributes)
                if inspect.getattr_static(obj, name, MISSING) is MISSING]
    for name, member in sorted(members.items()):
        found = inspect.getattr_static(obj, name, MISSING)
        if found is MISSING:
            problems.append(f"{where}.{name}: missing")
        elif isinstance(member, property):
            continue  # read as an attribute: a property or a plain attribute both do
        elif isinstance(found, property) or not callable(getattr(obj, name)):
            problems.append(f"{where}.{name}: not a method")
        else:
            problems += [f"{where}.{name}: {p}" for p in signature_problems(member, getattr(obj, name))]
    return problems


# --- the real classes and the fakes -----------------------------------------------------------------------------
def request() -> GenerationRequest:
    return GenerationRequest.create(prompt="x", steps=2, width=64, height=64)


@pytest.mark.parametrize("kind", [PipelineManager, FakeManager], ids=lambda kind: kind.__name__)
def test_the_engine_and_its_fake_satisfy_engine(kind: type, tmp_path) -> None:
    if kind is PipelineManager:
        engine = make_manager(tmp_path)
    else:
        engine = FakeManager(Settings(outputs_dir=tmp_path / "outputs"), FakeRegistry())
    try:
        assert conformance_problems(Engine, engine) == []
        assert isinstance(engine, Engine)
    finally:
        engine.close()


def test_the_job_and_its_fake_satisfy_job_handle(tmp_path) -> None:
    job = Job(JobQueue(lambda job: None, lambda: 1), request())
    fake = FakeJob(FakeManager(Settings(outputs_dir=tmp_path / "outputs"), FakeRegistry()), request())
    for handle in (job, fake):
        assert conformance_problems(JobHandle, handle) == []
        assert isinstance(handle, JobHandle)


# --- negative controls: the checker refuses what does not conform ------------------------------------------------
class Handle:
    """A minimal JobHandle; ``variant`` breaks it one way at a time."""

    def __init__(self) -> None:
        self.id, self.request, self.state, self.started, self.progress = "j", None, "queued", None, None

    def position(self) -> int:
        return 0

    def cancel(self) -> None:
        pass

    def wait(self, timeout: float | None = None, poll_s: float = 0.1) -> Any:  # an extra optional parameter is fine
        return None


REMOVE = object()


def variant(base: type, **changes: Any) -> type:
    """A copy of ``base`` with members replaced (``REMOVE`` drops one)."""
    namespace = {k: v for k, v in vars(base).items() if k not in ("__dict__", "__weakref__")}
    for name, value in changes.items():
        if value is REMOVE:
            del namespace[name]
        else:
            namespace[name] = value
    return type(f"Broken{base.__name__}", (), namespace)


def _init_without_started(self) -> None:
    self.id, self.request, self.state, self.progress = "j", None, "queued", None


def _wait_with_required_extra(self, timeout=None, *, poll_s):
    return None


BROKEN_HANDLES = {
    "no cancel": (variant(Handle, cancel=REMOVE), "cancel"),
    "no started attribute": (variant(Handle, __init__=_init_without_started), "started"),
    "position is a property": (variant(Handle, position=property(lambda self: 0)), "position"),
    "wait without timeout": (variant(Handle, wait=lambda self: None), "wait"),
    "timeout renamed": (variant(Handle, wait=lambda self, seconds=None: None), "wait"),
    "timeout required": (variant(Handle, wait=lambda self, timeout: None), "wait"),
    "timeout keyword-only": (variant(Handle, wait=lambda self, *, timeout=None: None), "wait"),
    "timeout moved": (variant(Handle, wait=lambda self, poll_s=0.1, timeout=None: None), "wait"),
    "another default": (variant(Handle, wait=lambda self, timeout=5.0: None), "wait"),
    "an extra required parameter": (variant(Handle, wait=_wait_with_required_extra), "wait"),
}


def test_the_checker_accepts_the_minimal_handle() -> None:
    assert conformance_problems(JobHandle, Handle()) == []


@pytest.mark.parametrize(("broken", "member"), BROKEN_HANDLES.values(), ids=BROKEN_HANDLES.keys())
def test_the_checker_refuses_a_missing_member_or_an_incompatible_signature(broken: type, member: str) -> None:
    problems = conformance_problems(JobHandle, broken())
    assert problems and all(f".{member}:" in problem for problem in problems), problems


def test_isinstance_alone_misses_a_signature_change() -> None:
    broken = BROKEN_HANDLES["wait without timeout"][0]()
    assert isinstance(broken, JobHandle)  # runtime_checkable compares names only
    assert conformance_problems(JobHandle, broken)


def test_the_checker_refuses_an_engine_fake_that_drifted(tmp_path) -> None:
    """The two stand-ins this module replaced: one had no ``on_progress`` on submit, neither had ``status``/``run``."""

    class SubmitWithoutListener(FakeManager):
        def submit(self, request):  # type: ignore[override]
            return super().submit(request)

    settings, registry = Settings(outputs_dir=tmp_path / "outputs"), FakeRegistry()
    assert conformance_problems(Engine, SubmitWithoutListener(settings, registry)) == [
        "SubmitWithoutListener.submit: parameter 'on_progress' is missing, renamed, moved or of another kind"]
    no_status = variant(FakeManager, status=REMOVE, run=REMOVE)
    assert conformance_problems(Engine, no_status(settings, registry)) == [
        "BrokenFakeManager.run: missing", "BrokenFakeManager.status: missing"]
