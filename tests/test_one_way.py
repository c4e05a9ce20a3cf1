"""One way to do each thing: the source tree keeps a single atomic writer, a single training loop
and a single config-validation mechanism (a scan of the code, like a reviewer's grep)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(REPO.glob("wsi_lpd/**/*.py"))


def _hits(pattern: str) -> dict[str, list[int]]:
    regex = re.compile(pattern)
    found: dict[str, list[int]] = {}
    for path in SOURCES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if regex.search(code):
                found.setdefault(str(path.relative_to(REPO)), []).append(number)
    return found


def test_outputs_are_renamed_into_place_only_by_the_atomic_writer() -> None:
    hits = _hits(r"os\.replace\(|os\.rename\(|\.rename\(|tempfile\.|mkdtemp|\.partial-")
    hits.pop("wsi_lpd/io.py", None)
    # training moves its finished files into the temporary folder that io.atomic_dir renames
    assert set(hits) <= {"wsi_lpd/train/engine.py"}, hits
    assert len(hits.get("wsi_lpd/train/engine.py", [])) <= 1, hits


def test_one_training_loop() -> None:
    hits = _hits(r"\.backward\(")
    # the HisynSeg realism filter trains a 2-class image discriminator (not a segmentation run)
    assert set(hits) <= {"wsi_lpd/train/engine.py", "wsi_lpd/train/hisynseg/realism.py"}, hits
    assert all(len(lines) == 1 for lines in hits.values()), hits


def test_config_keys_are_checked_by_the_typed_models_only() -> None:
    hand_checks = _hits(r"unknown key|set\(data\) - |_check_keys|allowed_keys|CONFIG_KEYS")
    hand_checks.pop("wsi_lpd/settings.py", None)  # where ConfigError wording lives
    assert hand_checks == {}, hand_checks
    assert _hits(r"\(Section\):"), "no typed config sections found"
    assert set(_hits(r"class \w+\(BaseModel\)")) == {"wsi_lpd/settings.py"}  # the one base


def test_one_run_metadata_writer() -> None:
    # every run.json / export.json is written by wsi_lpd.run_metadata.write_run_metadata
    assert set(_hits(r"package_versions\(\)|\"finished_at\":|\"versions\":")) == {
        "wsi_lpd/run_metadata.py"
    }
    assert set(_hits(r"def write_run_metadata|hashlib\.sha256\(")) <= {
        "wsi_lpd/run_metadata.py",
        "wsi_lpd/networks/checkpoint.py",  # the model file's own SHA-256 (whole file)
    }, _hits(r"def write_run_metadata|hashlib\.sha256\(")


def test_one_rule_for_default_worker_counts() -> None:
    assert set(_hits(r"def default_workers|sched_getaffinity")) == {"wsi_lpd/cores.py"}


def test_writers_say_whether_they_are_atomic() -> None:
    """``write_*`` functions publish their file atomically (through wsi_lpd.io or another atomic
    writer); ``write_*_into`` functions write at the (temporary) path they are given."""
    import ast

    bodies: dict[str, tuple[str, str]] = {}
    for path in SOURCES:
        for node in ast.parse(path.read_text()).body:  # module-level functions
            if isinstance(node, ast.FunctionDef) and node.name.startswith("write_"):
                bodies[node.name] = (str(path.relative_to(REPO)), ast.unparse(node))
    atomic_calls = ("atomic_file(", "atomic_dir(", "write_json(", "write_text(", "Writer(")
    atomic = {n for n, (_, code) in bodies.items() if any(c in code for c in atomic_calls)}
    while True:  # also atomic: calls an atomic writer
        more = {n for n, (_, code) in bodies.items() if any(f"{a}(" in code for a in atomic - {n})}
        if more <= atomic:
            break
        atomic |= more
    into = {n for n in bodies if n.endswith("_into")}
    wrong = {n: bodies[n][0] for n in set(bodies) - into - atomic}
    assert not wrong, f"write_* functions that are not atomic (name them *_into): {wrong}"
    for name in into:
        code = bodies[name][1]
        assert "atomic_file(" not in code and "atomic_dir(" not in code, f"{name}: drop _into"
