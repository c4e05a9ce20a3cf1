"""The SLURM test's helper (snakemake/slurm-test/cluster.py): slurm.conf from the profile, checks.

The cluster itself runs in `snakemake/slurm-test/run.sh` (called by .ci/run); these tests cover
the parts that decide pass or fail, without SLURM.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "snakemake" / "profiles" / "slurm"
_spec = importlib.util.spec_from_file_location("cluster", REPO / "snakemake/slurm-test/cluster.py")
assert _spec is not None and _spec.loader is not None
cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster)


def test_the_profile_runs_without_accounting() -> None:
    prof = cluster.load_profile(PROFILE)
    assert prof["executor"] == "slurm"
    assert prof["slurm-status-command"] == "squeue"


def test_slurm_conf_fits_every_request_of_the_profile(tmp_path: Path) -> None:
    text = cluster.conf(PROFILE, tmp_path)
    prof = cluster.load_profile(PROFILE)
    node = next(line for line in text.splitlines() if line.startswith("NodeName="))
    fields = dict(kv.split("=", 1) for kv in node.split())
    assert int(fields["CPUs"]) >= max(prof["set-threads"].values())
    assert int(fields["RealMemory"]) >= max(
        r.get("mem_mb", 0) for r in [prof["default-resources"], *prof["set-resources"].values()]
    )
    parts = [line for line in text.splitlines() if line.startswith("PartitionName=")]
    assert [p.split()[0] for p in parts] == [f"PartitionName={n}" for n in ("cpu", "gpu")]
    assert "Default=YES" in parts[0]
    for key in ("JobCompType=jobcomp/filetxt", "MinJobAge=600", f"JobCompLoc={tmp_path}/"):
        assert key in text
    assert text.startswith(cluster.MARKER)


def test_expected_requests_per_rule() -> None:
    prof = cluster.load_profile(PROFILE)
    assert cluster.expected(prof, "train") == {
        "partition": "gpu",
        "mem_mb": 32000,
        "runtime_min": 1440,
        "cpus": 8,
    }
    assert cluster.expected(prof, "report") == {
        "partition": "cpu",
        "mem_mb": 8000,
        "runtime_min": 60,
    }


def record(job: int, rule_cpus: int, partition: str, mem: str, limit: int, state="COMPLETED"):
    return (
        f"JobId={job} UserId=root(0) Name=x JobState={state} Partition={partition} "
        f"TimeLimit={limit} NodeCnt=1 ProcCnt={rule_cpus} Tres=cpu={rule_cpus},mem={mem},node=1\n"
    )


def fake_run(tmp_path: Path, tweak: dict[str, str] | None = None) -> tuple[Path, Path, Path]:
    """A scratch folder as run.sh leaves it: job logs, scontrol dump, slurm logs, two results."""
    prof = cluster.load_profile(PROFILE)
    scratch, local, slurm = tmp_path, tmp_path / "local", tmp_path / "slurm"
    lines, jobs = [], []
    for i, rule in enumerate(cluster.CI_RULES, start=1):
        want = cluster.expected(prof, rule)
        cpus = want.get("cpus", 1)
        mem = (tweak or {}).get(rule, f"{want['mem_mb']}M")
        lines.append(record(i, cpus, want["partition"], mem, want["runtime_min"]))
        gres = " TresPerJob=gres:gpu:1" if rule in cluster.GPU_RULES else ""
        jobs.append(f"JobId={i} JobName=x{gres} Partition={want['partition']}\n")
        log = slurm / ".snakemake" / "slurm_logs" / f"rule_{rule}" / f"{i}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
    (scratch / "jobcomp.log").write_text("".join(lines))
    (scratch / "jobs.txt").write_text("".join(jobs))
    for run, fid in ((local, "a"), (slurm, "b")):
        geo = run / "results" / "ci" / "geojson" / "s.geojson"
        geo.parent.mkdir(parents=True)
        feat = {"type": "Feature", "id": fid, "geometry": None, "properties": {"k": 1}}
        geo.write_text(json.dumps({"type": "FeatureCollection", "features": [feat]}))
    return scratch, local, slurm


def test_check_passes_on_a_matching_run(tmp_path: Path) -> None:
    assert cluster.check(PROFILE, *fake_run(tmp_path)) == []


@pytest.mark.parametrize("tweak", [{"train": "30G"}, {"report": "4000M"}])
def test_check_names_a_job_whose_memory_differs_from_the_profile(tmp_path, tweak) -> None:
    problems = cluster.check(PROFILE, *fake_run(tmp_path, tweak))
    (rule,) = tweak
    assert (
        len(problems) == 1 and problems[0].startswith(f"rule {rule} ") and "mem_mb" in problems[0]
    )


def test_check_finds_missing_outputs_differing_features_and_extra_jobs(tmp_path: Path) -> None:
    scratch, local, slurm = fake_run(tmp_path)
    (local / "results/ci/model.pt").write_text("x")
    geo = slurm / "results/ci/geojson/s.geojson"
    geo.write_text(geo.read_text().replace('"k": 1', '"k": 2'))
    with (scratch / "jobcomp.log").open("a") as fh:
        fh.write(record(99, 1, "cpu", "8000M", 60, state="FAILED"))
    problems = "\n".join(cluster.check(PROFILE, scratch, local, slurm))
    assert "missing from the SLURM run: model.pt" in problems
    assert "geojson/s.geojson: features differ" in problems
    assert "SLURM job 99 ended FAILED" in problems
    assert "unexpected SLURM job(s) ['99']" in problems


def test_memory_units() -> None:
    assert cluster.parse_mb("32000M") == 32000
    assert cluster.parse_mb("31.25G") == 32000
    assert cluster.parse_mb("2048K") == 2
