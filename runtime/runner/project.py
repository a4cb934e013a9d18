"""Finding and loading the crew, flow or entrypoint of a release."""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .flows import enter_workdir, flow_fields

KINDS = ("crew", "json_crew", "flow", "declarative_flow", "entrypoint")



class Project:
    """``build()`` makes a fresh crew/flow/callable per run; ``inputs`` required, ``defaults`` not."""

    def __init__(self, kind: str, build: Callable[[], Any], inputs: list[str],
                 defaults: dict[str, Any] | None = None, total_tasks: int = 0,
                 flow: bool = False) -> None:
        self.kind = kind
        self.build = build
        self.inputs = inputs
        self.defaults = defaults or {}
        self.total_tasks = total_tasks
        self.flow = flow

    def describe(self) -> dict[str, Any]:
        """``GET /inputs``: the documented ``{"inputs": [...]}`` plus the optional inputs."""
        return {"inputs": self.inputs, "optional_inputs": self.defaults, "flow": self.flow}


def _module_classes(module: Any, accept: Callable[[type], bool]) -> list[type]:
    return [value for value in vars(module).values()
            if isinstance(value, type) and value.__module__ == module.__name__ and accept(value)]


def _is_crew_class(value: Any) -> bool:
    return bool(getattr(value, "is_crew_class", False))


def _is_flow_class(value: Any) -> bool:
    if not isinstance(value, type):
        return False
    from crewai.flow import Flow

    return isinstance(value, type) and issubclass(value, Flow) and value is not Flow


def _flow_project(kind: str, build: Callable[[], Any], sample: Any) -> Project:
    required, optional = flow_fields(sample)
    return Project(kind, build, required, optional, flow=True)


def _crew_project(kind: str, build: Callable[[], Any], defaults: dict[str, Any]) -> Project:
    crew = build()
    inputs = sorted(set(crew.fetch_inputs()) - set(defaults))
    return Project(kind, build, inputs, defaults, total_tasks=len(crew.tasks))


def load_project(args: argparse.Namespace) -> Project:
    kind = args.kind
    enter_workdir(args.app_dir.resolve())
    if kind == "crew":
        module = importlib.import_module(f"{args.package}.crew")
        classes = _module_classes(module, _is_crew_class)
        if not classes:
            raise LookupError(f"no @CrewBase class in src/{args.package}/crew.py")
        return _crew_project(kind, lambda: classes[0]().crew(), {})
    if kind == "json_crew":
        from crewai.project.crew_loader import load_crew

        path = Path(args.definition or "crew.jsonc").resolve()
        _, defaults = load_crew(path)
        return _crew_project(kind, lambda: load_crew(path)[0], dict(defaults or {}))
    if kind == "flow":
        module = importlib.import_module(f"{args.package}.main")
        classes = _module_classes(module, _is_flow_class)
        leaves = [c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)]
        if not leaves:
            raise LookupError(f"no Flow subclass in src/{args.package}/main.py")
        return _flow_project(kind, leaves[0], leaves[0]())
    if kind == "declarative_flow":
        from crewai.flow import Flow

        if not args.definition:
            raise ValueError("--definition is required for a declarative flow")
        path = Path(args.definition).resolve()
        sample = Flow.from_declaration(path=path)
        return _flow_project(kind, lambda: Flow.from_declaration(path=path), sample)
    return _entrypoint_project(args.entrypoint)


def _entrypoint_project(spec: str | None) -> Project:
    """``pkg.mod:callable``: a crew class, a Flow class, a factory, or a function of inputs."""
    if not spec or ":" not in spec:
        raise ValueError("--entrypoint must look like pkg.module:callable")
    module_name, _, attr = spec.partition(":")
    target = getattr(importlib.import_module(module_name), attr)
    if _is_crew_class(target):
        return _crew_project("entrypoint", lambda: target().crew(), {})
    if _is_flow_class(target):
        return _flow_project("entrypoint", target, target())
    params = [p for p in inspect.signature(target).parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if params:
        return Project("entrypoint", lambda: target, list(getattr(target, "inputs", [])))
    sample = target()
    if hasattr(sample, "fetch_inputs"):
        return _crew_project("entrypoint", target, {})
    if hasattr(sample, "kickoff"):
        return _flow_project("entrypoint", target, sample)
    raise TypeError(f"{spec} returned {type(sample).__name__}, not a Crew or a Flow")
