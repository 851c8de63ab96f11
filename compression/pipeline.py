"""A pipeline of stages that each declare what they read, need and write; the pipeline owns resume, fingerprints and timing.

A :class:`Stage` is one small class: its ``name``, the settings it ``reads``
(config keys such as ``"compress.finetune_epochs"``, a ``"section.*"`` prefix,
or a named group such as ``"@data"``), the stages it ``needs``, the files it
``writes`` in the run folder, and :meth:`Stage.run`, which returns a JSON-able
result. The :class:`Pipeline` does the rest for every stage, the same way
(NNCF's quantization pipeline runs steps that declare what they need;
ultralytics' ``@try_export`` gives every export the same timing, logging and
error handling):

- the **fingerprint** of a stage is a digest of the values of the settings it
  reads and the fingerprints of the stages it needs, so a change reaches
  exactly the stages that read it and those downstream of them;
- a stage whose record (``stages/NAME.json``) carries its fingerprint is
  **skipped**, and its result is read back from the record;
- a **stale** stage (its record has another fingerprint) is cleared — record
  and files — with ``force``, and refused without it, naming the settings
  that changed (a ``rewritable`` stage, a document made from the others'
  results, is redone without asking);
- a stage that was **interrupted** resumes from the files it left (its
  training folders), unless it was started from other inputs: then they are
  cleared first;
- each stage is **timed** and its record written atomically when it ends;
- a stage reads only the results and files of the stages it needs
  (:class:`StageContext`), and a stage that writes a top-level file or folder it
  did not declare **fails loudly**;
- ``reuse`` copies finished measuring stages from another run folder whose
  fingerprints match (``compress --measurements-from``); a stage may name
  settings (``lend_ignores``) a lent copy may differ in when its result says it
  did not depend on them (``lendable``): the levers search reads the time
  budget only to stop early, and a search that ran to its end is lent to a run
  with another budget.

Example::

    class Count(Stage):
        name, reads, writes = "count", ("train.batch_size",), ("count.json",)

        def run(self, ctx):
            ctx.output("count.json").write_text(str(ctx.setting("train.batch_size")))
            return {"done": True}

    Pipeline([Count()], {"train.batch_size": 8}, Path("run")).run_all()
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from yolo3.errors import UserError
from yolo3.reporting import to_json, write_json

RESERVED = ("stages", "job.json")  # entries of the run folder the pipeline itself owns


class StageContractError(UserError):
    """A stage broke its declaration (wrote an undeclared file, read an undeclared setting or stage): a bug in the stage."""


def digest(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


class Stage:
    """One step of a :class:`Pipeline` (see the module docstring); subclasses set the class attributes and :meth:`run`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # what the stage does, one line (the stages table in the docs)
    reads: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    measuring: ClassVar[bool] = False  # a measurement another run folder may lend (--measurements-from)
    # a stage that only writes a document from the others' results (the report): redone when its inputs change without --force
    rewritable: ClassVar[bool] = False
    version: ClassVar[int] = 1  # raise when the stage computes something else from the same inputs
    # settings a measuring stage's lent copy may differ in, when ``lendable`` says its result did not depend on them
    lend_ignores: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx: StageContext) -> dict:
        raise NotImplementedError

    def lendable(self, result: dict) -> bool:
        """Whether a finished result made with other values of ``lend_ignores`` is this stage's result too."""
        return True


class StageContext:
    """What one running stage may see: its declared settings, the results and files of the stages it needs, its own outputs."""

    def __init__(self, pipeline: Pipeline, stage: Stage, services: Any = None):
        self.pipeline = pipeline
        self.stage = stage
        self.services = services
        self.run_dir = pipeline.run_dir
        self._upstream = pipeline.upstream(stage.name)
        self._keys = pipeline.expand(stage.reads)

    def setting(self, key: str) -> Any:
        """The value of a setting this stage declares in ``reads``."""
        if key not in self._keys:
            raise StageContractError(f"stage {self.stage.name!r} reads setting {key!r}, which it does not declare in reads (a bug in the stage)")
        return self.pipeline.settings[key]

    def result(self, stage: str) -> dict:
        """The result of a stage this one needs (directly or through another)."""
        if stage not in self._upstream:
            raise StageContractError(f"stage {self.stage.name!r} reads the result of {stage!r}, which it does not need (a bug in the stage)")
        return self.pipeline.results[stage]

    def has(self, stage: str) -> bool:
        """Whether an upstream stage is part of this pipeline (some are left out, e.g. the sensitivity analysis of a fixed plan)."""
        return stage in self._upstream and stage in self.pipeline.results

    def input(self, name: str) -> Path:
        """A file written by a stage this one needs (or a file inside a folder it declares: ``folder/file``)."""
        declared = Path(name).parts[0]
        owners = [s for s in self._upstream if declared in self.pipeline.stage(s).writes]
        if not owners:
            raise StageContractError(f"stage {self.stage.name!r} reads {name!r}, which no stage it needs writes (a bug in the stage)")
        return self.run_dir / name

    def output(self, name: str) -> Path:
        """A file or folder this stage declares in ``writes`` (or a file inside such a folder: ``folder/file``)."""
        if Path(name).parts[0] not in self.stage.writes:
            raise StageContractError(f"stage {self.stage.name!r} writes {name!r}, which it does not declare in writes (a bug in the stage)")
        return self.run_dir / name


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in folder.iterdir():
        if p.name in RESERVED or p.name.startswith("."):
            continue
        st = p.stat()
        out[p.name] = (st.st_mtime_ns, st.st_size if p.is_file() else -1)
    return out


class Pipeline:
    """Stages in order, over one run folder (see the module docstring)."""

    def __init__(self, stages: list[Stage], settings: Mapping[str, Any], run_dir: Path, *, groups: Mapping[str, tuple[str, ...]] | None = None,
                 force: bool = False, log: Callable[[str], None] | None = None, services: Any = None):  # fmt: skip
        from yolo3.fileio import check_output_folder

        self.stages = list(stages)
        self.settings = json.loads(to_json(dict(settings)))
        self.groups = dict(groups or {})
        self.services = services
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.results: dict[str, dict] = {}
        names = [s.name for s in self.stages]
        for k, s in enumerate(self.stages):
            if names.count(s.name) > 1:
                raise ValueError(f"two stages are named {s.name!r}")
            missing = [n for n in s.needs if n not in names[:k]]
            if missing:
                raise ValueError(f"stage {s.name!r} needs {missing}, which is not an earlier stage")
            unknown = [k for k in self.expand(s.reads) if k not in self.settings]
            if unknown:
                raise ValueError(f"stage {s.name!r} reads unknown settings {unknown}")
        self.fingerprints: dict[str, str] = {}
        self.lend_prints: dict[str, str] = {}  # the fingerprints without each stage's lend_ignores (reuse)
        for s in self.stages:
            self.fingerprints[s.name] = self._print(s, (), self.fingerprints)
            self.lend_prints[s.name] = self._print(s, s.lend_ignores, self.lend_prints)
        self.run_dir = check_output_folder(Path(run_dir), "run folder (--run-dir)")
        (self.run_dir / "stages").mkdir(parents=True, exist_ok=True)
        self._clear_stale(force)

    # -- declarations -----------------------------------------------------------------------------

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def expand(self, reads) -> list[str]:
        """Declared reads as setting keys: groups (``@name``) and prefixes (``section.*``) resolved."""
        out: list[str] = []
        for key in reads:
            if key.startswith("@"):
                out += self.expand(self.groups[key])
            elif key.endswith(".*"):
                out += sorted(k for k in self.settings if k.startswith(key[:-1]))
            else:
                out.append(key)
        return list(dict.fromkeys(out))

    def _print(self, stage: Stage, ignored: tuple[str, ...], upstream: dict[str, str]) -> str:
        """A digest of the stage, its settings but ``ignored``, and the ``upstream`` prints of the stages it needs."""
        settings = {k: v for k, v in self.read_values(stage).items() if k not in ignored}
        return digest({"stage": stage.name, "version": stage.version, "settings": settings, "needs": {n: upstream[n] for n in stage.needs}})

    def read_values(self, stage: Stage) -> dict:
        return {k: self.settings.get(k) for k in self.expand(stage.reads)}

    def upstream(self, name: str) -> set[str]:
        """Every stage ``name`` needs, directly or through others."""
        seen: set[str] = set()
        todo = list(self.stage(name).needs)
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += list(self.stage(n).needs)
        return seen

    # -- records ----------------------------------------------------------------------------------

    def _record_path(self, name: str, suffix: str = "") -> Path:
        return self.run_dir / "stages" / f"{name}{suffix}.json"

    def record(self, name: str, suffix: str = "") -> dict | None:
        f = self._record_path(name, suffix)
        if not f.exists():
            return None
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"fingerprint": None}

    def done(self, name: str) -> dict | None:
        """The result of a finished stage made from the current inputs, or None."""
        rec = self.record(name)
        return rec.get("result") if rec and rec.get("fingerprint") == self.fingerprints[name] else None

    def clear(self, name: str) -> None:
        """Remove a stage's record, start marker and files."""
        for suffix in ("", ".started"):
            self._record_path(name, suffix).unlink(missing_ok=True)
        for entry in self.stage(name).writes:
            p = self.run_dir / entry
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def _changed(self, stage: Stage, rec: dict) -> list[str]:
        before = rec.get("settings")
        if not isinstance(before, dict):
            return ["(a record of an earlier version of the tool)"]
        now = self.read_values(stage)
        keys = [k for k in now if before.get(k) != now[k]]
        needs = [n for n in stage.needs if self.record(n) and self.record(n).get("fingerprint") != self.fingerprints[n]]
        return keys + [f"stage {n}" for n in needs] or ["(its code version)"]

    def _clear_stale(self, force: bool) -> None:
        stale = [(s, r) for s in self.stages if (r := self.record(s.name)) is not None and r.get("fingerprint") != self.fingerprints[s.name]]
        asks = [(s, r) for s, r in stale if not s.rewritable]
        if asks and not force:
            first, rec = asks[0]
            raise UserError(f"this run folder holds stage {first.name!r} made from other inputs (changed: {', '.join(self._changed(first, rec)[:4])}); "
                            f"stages that would be redone: {', '.join(s.name for s, _ in stale)}. Pass --force to redo them, "
                            "or choose another --run-dir", self.run_dir)  # fmt: skip
        for s, rec in stale:
            self.log(f"{s.name}: made from other inputs ({', '.join(self._changed(s, rec)[:4])}); redone")
            self.clear(s.name)
        for s in self.stages:  # interrupted stages that were started from other inputs: their half-made files go
            started = self.record(s.name, ".started")
            if started is not None and self.record(s.name) is None and started.get("fingerprint") != self.fingerprints[s.name]:
                self.clear(s.name)

    def reuse(self, other: Path, names: list[str] | None = None) -> list[str]:
        """Copy the finished measuring stages of another run folder made from the same inputs; notes on what could not be reused."""
        if not (other / "stages").is_dir():
            raise UserError("--measurements-from: not a compress run folder (no stages/)", other)
        notes = []
        for s in self.stages:
            if not s.measuring or (names is not None and s.name not in names) or self.done(s.name) is not None:
                continue
            rec = other / "stages" / f"{s.name}.json"
            if not rec.exists():
                continue
            try:
                theirs = json.loads(rec.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                theirs = {}
            same = theirs.get("fingerprint") == self.fingerprints[s.name]
            if not same and not (theirs.get("lend_print") == self.lend_prints[s.name] and s.lendable(theirs.get("result") or {})):
                notes.append(f"--measurements-from: {s.name} there was made from other inputs; measured again")
                break
            for entry in s.writes:
                src = other / entry
                if src.is_file():
                    shutil.copyfile(src, self.run_dir / entry)
                elif src.is_dir():
                    shutil.copytree(src, self.run_dir / entry, dirs_exist_ok=True)
            differ = [k for k in s.lend_ignores if (theirs.get("settings") or {}).get(k) != self.settings.get(k)]
            if not same and differ:  # (a stage that differs only through a lent one upstream is the same measurement)
                notes.append(f"--measurements-from: {s.name} reused though {', '.join(differ)} differs (its result did not depend on it)")
            # the record as this run would have written it: later runs and stages see this run's fingerprint
            write_json(self._record_path(s.name), {**theirs, "fingerprint": self.fingerprints[s.name], "lend_print": self.lend_prints[s.name],
                                                   "settings": self.read_values(s), "lent_from": str(other)})  # fmt: skip
        return notes

    # -- running ----------------------------------------------------------------------------------

    def run_stage(self, stage: Stage, index: int | None = None, total: int | None = None, status: Callable[[], str] | None = None) -> dict:
        """Run one stage (or read its result back when it is done); the result."""
        label = f"[{index}/{total}] {stage.name}" if index else stage.name
        done = self.done(stage.name)
        if done is not None:
            self.log(f"{label}: done before, skipped")
            self.results[stage.name] = done
            return done
        self.log(f"{label} ..." + (f" ({status()})" if status else ""))
        write_json(self._record_path(stage.name, ".started"), {"stage": stage.name, "fingerprint": self.fingerprints[stage.name]})
        before = _snapshot(self.run_dir)
        t0 = time.perf_counter()
        result = stage.run(StageContext(self, stage, self.services))
        seconds = time.perf_counter() - t0
        after = _snapshot(self.run_dir)
        stray = sorted(n for n, v in after.items() if n not in stage.writes and before.get(n) != v)
        if stray:
            raise StageContractError(f"stage {stage.name!r} wrote {', '.join(stray)}, which it does not declare in writes (a bug in the stage)", self.run_dir)
        result = json.loads(to_json(result))
        write_json(self._record_path(stage.name), {"stage": stage.name, "fingerprint": self.fingerprints[stage.name], "seconds": seconds,
                                                   "lend_print": self.lend_prints[stage.name], "settings": self.read_values(stage),
                                                   "needs": list(stage.needs), "result": result})  # fmt: skip
        self._record_path(stage.name, ".started").unlink(missing_ok=True)
        self.results[stage.name] = result
        self.log(f"{label}: finished in {seconds / 60:.1f} min")
        return result

    def run_all(self, status: Callable[[], str] | None = None) -> dict[str, dict]:
        """Every stage in order; the results by stage name."""
        for k, s in enumerate(self.stages, 1):
            self.run_stage(s, k, len(self.stages), status)
        return self.results

    def seconds(self) -> dict[str, float]:
        """Seconds each finished stage took, from the records."""
        out = {}
        for s in self.stages:
            rec = self.record(s.name)
            if rec and rec.get("fingerprint") == self.fingerprints[s.name]:
                out[s.name] = float(rec.get("seconds", 0.0))
        return out


def stages_table(stages: list[Stage], groups: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """A markdown table of stages: name, what it does, the settings it reads, the stages it needs, the files it writes."""
    rows = ["| stage | what it does | reads | needs | writes |", "|---|---|---|---|---|"]
    for s in stages:
        reads = ", ".join(f"`{k}`" for k in s.reads) or "-"
        rows.append(f"| `{s.name}` | {s.title} | {reads} | {', '.join(s.needs) or '-'} | {', '.join(f'`{w}`' for w in s.writes) or '-'} |")
    if groups:
        rows.append("")
        for name, keys in groups.items():
            rows.append(f"`{name}`: " + ", ".join(f"`{k}`" for k in keys))
    return "\n".join(rows)
