"""Batch rendering: ``supergen render --jobs FILE --output-dir DIR [--dry-run]``.

A jobs file is JSONL (one JSON object a line) or CSV (a header row), one video a row, with the fields
of :data:`FIELDS`; a missing field takes the config's value. ``overrides`` is a list of ``key=value``
config overrides (in CSV: separated by ``;``). An ``input`` video makes the row an upscale of it
(``supergen upscale``: its frame count, fps and audio; the size from ``height``/``width`` or ``scale``
2, 3 or 4). An optional ``name`` sets the output file's stem;
otherwise it is derived from the prompt and a hash of the row, so it is stable across reruns and
reorderings of the file.

The model loads once. Each finished job leaves ``DIR/<name>.mp4`` and ``DIR/<name>.json`` (sidecar:
resolved config, seed, per-stage seconds, tiles, cache and parallel statistics, package versions),
both written atomically, and with ``output.save_sketch`` (``--save-sketch``, or per job) the sketch as
``DIR/<name>.sketch.mp4``. A job is finished when its sidecar exists and records the same row, model
and effective config (:attr:`Job.fingerprint`): a rerun resumes and skips those. A job whose outputs
exist but were made from another row, model or config is refused, as a single render refuses an
existing output, unless ``--overwrite`` (then it is rendered again and replaces them). Every job's
outcome is appended to ``DIR/results.jsonl``; a failing job is recorded there and the others go on.

A job being rendered is claimed (:func:`claim`: an exclusive ``flock`` on ``DIR/.<name>.lock``, which
the kernel releases when its process ends, however it ends): a second batch on the same folder skips
it instead of rendering it again.

With several ranks the world is split into groups of ``parallel.group_size`` ranks; job ``i`` (of
those still to do) goes to group ``i mod groups``, and the ranks of a group share its tiles.
With ``--ray`` the jobs go to render groups on a Ray cluster instead, each taking the next job when
idle (:mod:`supergen.farm`); the folder is the same either way.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .config import SHORTHANDS, SuperGenConfig, as_fingerprinted, load_config, to_dict
from .errors import SuperGenError
from .preflight import check_image, check_image_use, check_writable_folder
from .runtime import Runtime
from .videoio import atomic_file

logger = logging.getLogger("supergen")

#: Row fields and the config key each sets: the job's shorthands a row may set (the same names as the flags).
FIELDS = {name: SHORTHANDS[name] for name in ("prompt", "negative_prompt", "image", "seed", "height", "width", "num_frames")}
EXTRA_FIELDS = ("name", "overrides", "input", "scale")
#: Config sections a row may not change: the model is loaded once and the ranks are grouped once.
FIXED_SECTIONS = ("model.", "parallel.")
RESULTS = "results.jsonl"
#: ``parallel`` keys left out of a job's fingerprint (taken at their defaults): a rerun with another
#: timeout or retry count (``--ray``'s ``parallel.attempts``) resumes the folder instead of refusing it.
RUN_ONLY = ("timeout_s", "attempts")


def settings(config: SuperGenConfig) -> dict[str, Any]:
    """The values of ``config`` that differ from its class's defaults, by dotted key
    (``{"tiling.mode": "overlap", ...}``)."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if dataclasses.is_dataclass(node):
            return {k: v for f in dataclasses.fields(node) for k, v in flat(getattr(node, f.name), f"{prefix}{f.name}.").items()}
        return {prefix[:-1]: node}

    defaults = flat(type(config)())
    return {key: value for key, value in flat(config).items() if key not in defaults or defaults[key] != value}


@dataclass
class Job:
    """One valid row: where it came from, its resolved config, and its output stem."""

    line: int
    row: dict[str, Any]
    config: SuperGenConfig
    name: str
    #: The probed ``input`` video of an upscale row (:mod:`supergen.upscale_video`), else None.
    source: Any = None

    @property
    def fingerprint(self) -> str:
        """What makes this job's video: its row and the settings of its effective config (model included)
        that differ from the defaults (:func:`settings`), less the keys that say how long to wait for
        ranks and how often to retry (:data:`RUN_ONLY`), which change no pixel. Keys that moved since
        fingerprints began count under their old names (:func:`~supergen.config.as_fingerprinted`).

        Only non-default values count, so a release that adds a config key (at a default that keeps
        today's behaviour) does not change the fingerprint of every finished job: a rerun after an
        upgrade resumes the folder instead of refusing or re-rendering it.
        """
        changed = {key: value for key, value in as_fingerprinted(settings(self.config), self.config.cache.policy).items()
                   if key.removeprefix("parallel.") not in RUN_ONLY}
        return hashlib.sha256(json.dumps([self.row, changed], sort_keys=True, default=str).encode()).hexdigest()[:16]

    def outputs(self, out: Path) -> list[Path]:
        """The files this job writes in ``out``: the video, the sidecar, and the sketch when it saves one."""
        names = [f"{self.name}.mp4", f"{self.name}.json"] + ([f"{self.name}.sketch.mp4"] if self.config.output.save_sketch else [])
        return [out / n for n in names]

    def finished_in(self, out: Path) -> bool:
        """Whether ``out`` holds this job's video: a sidecar with the same fingerprint, and the video."""
        sidecar_path = out / f"{self.name}.json"
        if not sidecar_path.is_file() or not (out / f"{self.name}.mp4").is_file():
            return False
        try:
            return json.loads(sidecar_path.read_text()).get("fingerprint") == self.fingerprint
        except (json.JSONDecodeError, OSError):
            return False

    def blocked_in(self, out: Path) -> Path | None:
        """An existing output in ``out`` that is not this job's (another row, model or config made it), if any.

        Call it on a job that is not :meth:`finished_in` ``out``: then any of its outputs there is someone else's.
        """
        return next((path for path in self.outputs(out) if path.exists()), None)


@dataclass
class BadRow:
    line: int
    error: str


@dataclass
class JobFile:
    jobs: list[Job] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


def read_rows(path: Path) -> list[tuple[int, dict[str, Any] | str]]:
    """``(line number, row)`` for each job in the file; ``row`` is an error message when it cannot be parsed."""
    if not path.is_file():
        raise SuperGenError(f"jobs file {str(path)!r} does not exist")
    # utf-8-sig: a byte-order mark (spreadsheets' "CSV UTF-8") is not part of the first column's name.
    text = path.read_text(encoding="utf-8-sig")
    rows: list[tuple[int, dict[str, Any] | str]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for record in reader:
            line = reader.line_num
            if None in record:
                rows.append((line, f"more values than the {len(reader.fieldnames or [])} header columns"))
                continue
            row: dict[str, Any] = {k: v for k, v in record.items() if v not in (None, "")}
            if "overrides" in row:
                row["overrides"] = [item.strip() for item in row["overrides"].split(";") if item.strip()]
            rows.append((line, row))
        return rows
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            rows.append((line, f"not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        rows.append((line, row) if isinstance(row, dict) else (line, "a row must be a JSON object"))
    return rows


def parse_jobs(path: str | os.PathLike, base: SuperGenConfig) -> JobFile:
    """Validate every row of ``path`` against ``base`` (no model is loaded); collect good jobs and bad rows."""
    path = Path(path)
    result = JobFile()
    names: dict[str, int] = {}
    for line, row in read_rows(path):
        try:
            if isinstance(row, str):
                raise SuperGenError(row)
            job = _job(line, row, base, path.parent)
            if job.name in names:
                raise SuperGenError(f"output name {job.name!r} is also used by line {names[job.name]}")
            names[job.name] = line
            result.jobs.append(job)
        except SuperGenError as exc:
            result.bad.append(BadRow(line, str(exc)))
    return result


def _job(line: int, row: dict[str, Any], base: SuperGenConfig, folder: Path) -> Job:
    unknown = sorted(set(row) - set(FIELDS) - set(EXTRA_FIELDS))
    if unknown:
        raise SuperGenError(f"unknown field(s) {', '.join(unknown)}; valid: {', '.join([*FIELDS, *EXTRA_FIELDS])}")
    overrides = row.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise SuperGenError('overrides must be a list of "key=value" strings')
    fixed = [o for o in overrides if o.startswith(FIXED_SECTIONS)]
    if fixed:
        raise SuperGenError(f"{', '.join(fixed)}: model.* and parallel.* are set for the whole batch, not per job")
    values = {}
    for key, config_key in FIELDS.items():
        if key in row:
            value = row[key]
            if key == "image":
                value = str(folder / value) if not os.path.isabs(value) else value
                check_image(value)
            values[config_key] = value
    # Field values go in as a mapping (typed by omegaconf); CLI-style overrides come last and win.
    cfg = load_config(load_config(base, values), overrides)
    check_image_use(cfg)
    name = row.get("name") or _default_name(row)
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise SuperGenError(f"name {name!r} must be letters, digits, '.', '_' or '-'")
    if "input" not in row:
        if "scale" in row:
            raise SuperGenError("scale sizes an upscale: give it with an input video")
        return Job(line, row, cfg, name)
    from .upscale_video import probe, target_size, upscale_config

    source = probe(row["input"] if os.path.isabs(row["input"]) else folder / row["input"])
    size = target_size(source.size, row.get("height"), row.get("width"), row.get("scale"))
    return Job(line, row, upscale_config(cfg, source, size, source.frames, row.get("prompt")), name, source)


def _default_name(row: dict[str, Any]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", str(row.get("prompt", "job")).lower()).strip("-")[:40] or "job"
    digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def format_bad_rows(path: str | os.PathLike, bad: list[BadRow]) -> str:
    return "\n".join(f"{path}:{b.line}: {b.error}" for b in bad)


def render_jobs(base: SuperGenConfig, jobs_path: str, output_dir: str | None, dry_run: bool = False, quiet: bool = False,
                overwrite: bool = False, elsewhere: Callable[[list[Job], Path, str], object] | None = None) -> int:
    """The ``--jobs`` command. Exit status 0 when every job is done, 1 when some failed, 2 on bad rows in a dry run.

    Args:
        overwrite: render again a job whose outputs exist from another row, model or config (else it is refused).
        elsewhere: ``elsewhere(jobs, out, run_id)`` renders the jobs left to do instead of this process' ranks
            and records them (the Ray farm: :func:`supergen.farm.farm_renderer`, which imports this module,
            so the batch takes the farm as a value rather than importing it).
    """
    from . import parallel

    parsed = parse_jobs(jobs_path, base)
    if dry_run:
        # No process group: every rank validates the same file; rank 0 speaks.
        if int(os.environ.get("RANK", "0")) == 0:
            if parsed.bad:
                print(format_bad_rows(jobs_path, parsed.bad), file=sys.stderr)
            print(f"{jobs_path}: {len(parsed.jobs)} valid job(s), {len(parsed.bad)} bad row(s)")
        return 2 if parsed.bad else 0
    if output_dir is None:
        raise SuperGenError("--jobs needs --output-dir (or --dry-run)")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise SuperGenError(f"--output-dir {str(out)!r} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # under a file, or in a folder we may not write
        raise SuperGenError(f"--output-dir {str(out)!r} cannot be created: {exc.strerror} ({exc.filename})") from None
    check_writable_folder(out, "--output-dir")
    # The Ray farm's driver renders nothing itself (its render groups are Ray actors): no device, no ranks here.
    runtime = Runtime.start(base, quiet=quiet, load=False) if elsewhere is None else None
    group = runtime.group if runtime is not None else None
    leader = runtime is None or runtime.leader
    speaker = group is None or group.global_rank == 0
    # Rank 0 picks the run id (the summary selects this run's lines of results.jsonl by it) and the
    # jobs left to do; every rank follows, so the groups agree on how the jobs are split.
    refused = {} if overwrite else {job.name: path for job in parsed.jobs if not job.finished_in(out) and (path := job.blocked_in(out))}
    # (Time and pid alone repeat for two runs within a second of one process, e.g. through the API.)
    decided = [f"{time.time():.0f}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
               [job.name for job in parsed.jobs if job.name not in refused and not job.finished_in(out)]]
    if group is not None:
        torch.distributed.broadcast_object_list(decided, src=0)
    run_id, left = decided[0], set(decided[1])
    todo = [job for job in parsed.jobs if job.name in left]
    if speaker:  # recorded once, by rank 0
        for b in parsed.bad:
            _record(out, {"run": run_id, "line": b.line, "status": "invalid", "error": b.error})
        if parsed.bad:
            logger.warning("%s", format_bad_rows(jobs_path, parsed.bad))
        for job in parsed.jobs:
            if job.name in refused:
                error = (f"{refused[job.name]} exists from another row, model or config (a single render refuses an existing "
                         f"output too); pass --overwrite to replace it")
                logger.warning("job at line %d: %s", job.line, error)
                _record(out, {"run": run_id, "line": job.line, "name": job.name, "status": "failed", "error": error})
            elif job.name not in left:
                _record(out, {"run": run_id, "line": job.line, "name": job.name, "status": "skipped", "output": str(out / f"{job.name}.mp4")})
    if elsewhere is not None:
        elsewhere(todo, out, run_id)
    mine = [job for i, job in enumerate(todo) if group is None or i % group.count == group.index] if elsewhere is None else []

    if mine:
        runtime.load(quiet)
    for job in mine:
        with claim(out, job.name) if leader else contextlib.nullcontext(True) as claimed:
            if group is not None and group.size > 1:  # the leader's claim decides for its whole group
                box = [claimed and (not leader or not job.finished_in(out))]
                torch.distributed.broadcast_object_list(box, src=group.global_of(0), group=group.pg)
                claimed = box[0]
            elif claimed and job.finished_in(out):  # another batch finished it since the plan above
                claimed = False
            if not claimed:
                if leader:
                    _record(out, {"run": run_id, "line": job.line, "name": job.name, "status": "skipped",
                                  "output": str(out / f"{job.name}.mp4"), "note": "rendered by another batch"})
                continue
            record = _render_one(runtime, job, out)
        if leader:
            _record(out, {"run": run_id, **record})
    if group is not None:
        parallel.wait_for_all_groups()  # every group done: results.jsonl is complete
    if speaker:
        print(summary(out, run_id))
    lines = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()] if (out / RESULTS).is_file() else []
    failed = any(r.get("run") == run_id and r["status"] in ("failed", "invalid") for r in lines)
    return 1 if failed else 0


@contextlib.contextmanager
def claim(out: Path, name: str) -> Iterator[bool]:
    """Claim the job ``name`` in ``out`` for the ``with`` block; yields False when another process holds it.

    The claim is an exclusive ``flock`` on ``out/.<name>.lock``: the kernel drops it when the holding
    process ends, even when it is killed, so a dead batch never keeps a job. The file is removed on
    release, while still locked; a process that opened it before the removal finds, once it holds the
    lock, that the path names another file (or none) and tries again.
    """
    path = out / f".{name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            yield False
            return
        try:
            held, named = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed it after we opened it: lock the file that is there now
    try:
        yield True
    finally:
        Path(path).unlink(missing_ok=True)
        os.close(fd)


def _render_one(runtime: Runtime, job: Job, out: Path, record_fatal: bool = True) -> dict[str, Any]:
    """Render one job; return its results record. Errors every rank agrees on are recorded, not raised.

    Args:
        record_fatal: a rank that fails alone appends its own record before it raises (under torchrun no
            one else can); the Ray farm's driver records it instead (:mod:`supergen.farm`).
    """
    from .parallel import RankFailure

    output = out / f"{job.name}.mp4"
    sketch_output = out / f"{job.name}.sketch.mp4" if job.config.output.save_sketch else None
    start = time.perf_counter()
    record: dict[str, Any] = {"line": job.line, "name": job.name}
    try:
        if job.source is not None:
            from .upscale_video import render_upscale

            done = render_upscale(runtime, job.config, job.source, output)
        else:
            done = runtime.render(job.config, output, sketch_output)
        if runtime.leader:
            try:
                _write_json(out / f"{job.name}.json", sidecar(job, done, time.perf_counter() - start, runtime.group))
            except BaseException:
                # A video without its sidecar would not count as finished, and would block a rerun as someone else's.
                for path in job.outputs(out):
                    path.unlink(missing_ok=True)
                raise
    except RankFailure as exc:
        if not exc.recoverable:
            raise  # the group's communication is broken: nothing more can run here
        return record | {"status": "failed", "error": str(exc).splitlines()[0]}
    except Exception as exc:  # noqa: BLE001 - a job's failure is recorded; the batch goes on
        if not isinstance(exc, SuperGenError) and runtime.group is not None and runtime.group.size > 1:
            # Only this rank failed, outside the tile exchange: its peers cannot know; end the process.
            if record_fatal:
                _record(out, record | {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "fatal": True})
            raise
        logger.warning("job at line %d failed: %s", job.line, exc)
        return record | {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return record | {"status": "ok", "output": str(output), "seconds": round(time.perf_counter() - start, 3)}


def _group_info(group) -> dict[str, int]:
    """Which group of how many rendered this job (one process: group 0 of 1, one rank)."""
    if group is None:
        return {"group": 0, "groups": 1, "ranks": 1}
    return {"group": group.index, "groups": group.count, "ranks": group.size}


def sidecar(job: Job, done, seconds: float, group=None) -> dict[str, Any]:
    """What the sidecar JSON of one finished job holds; ``group``: the :class:`~supergen.parallel.TileGroup` that rendered it."""
    result = done.output
    stats = result.stats
    data: dict[str, Any] = {
        "line": job.line,
        "row": job.row,
        "fingerprint": job.fingerprint,
        "seed": done.seed,
        "config": to_dict(job.config),
        "seconds": {**stats.seconds, "total": seconds},
        "size": list(stats.size),
        "canvas": list(stats.canvas),
        "sketch": list(stats.sketch) if stats.sketch else None,
        # output.save_sketch asks for it; a render from noise (strength 1) has none to save.
        "sketch_video": f"{job.name}.sketch.mp4" if job.config.output.save_sketch and result.sketch is not None else None,
        "tiles": {
            "tiling": stats.tiling,
            "steps": [{"tiles": s.tiles, "computed": s.tiles_computed, "seconds": s.seconds} for s in stats.steps],
            "tile_forwards": stats.tile_forwards,
        },
        "parallel": _group_info(group) | stats.parallel,
        "versions": versions(),
    }
    report = result.cache_report
    if report is not None:
        data["cache"] = {"tile_steps": report.tile_steps, "tiles_skipped": report.tiles_skipped, "block_share_skipped": report.block_share_skipped}
    return data


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("supergen", "torch", "diffusers", "transformers", "accelerate"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def summary(out: Path, run_id: str) -> str:
    """A table of this run's jobs from ``results.jsonl``."""
    rows = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()] if (out / RESULTS).is_file() else []
    rows = sorted((r for r in rows if r.get("run") == run_id), key=lambda r: r["line"])
    lines = [f"{'line':>5}  {'status':<8} {'seconds':>8}  output / error"]
    for r in rows:
        seconds = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        lines.append(f"{r['line']:>5}  {r['status']:<8} {seconds:>8}  {r.get('output') or r.get('error', '')}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed", "invalid")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def _record(out: Path, record: dict[str, Any]) -> None:
    # One short line per write in append mode: whole lines even with several group leaders appending.
    try:
        with open(out / RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:  # e.g. a full disk: stop, with what is kept
        raise SuperGenError(f"cannot append to {str(out / RESULTS)!r} ({exc.strerror}); the videos and sidecars written so far "
                            f"are kept and a rerun skips them") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
