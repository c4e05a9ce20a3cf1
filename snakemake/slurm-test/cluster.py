"""Single-node SLURM test cluster: slurm.conf from the SLURM profile, and the checks of a run.

    python cluster.py conf PROFILE SCRATCH            # prints slurm.conf; gres.conf beside it
    python cluster.py threads PROFILE                 # snakemake flags: the profile's threads
    python cluster.py check PROFILE SCRATCH LOCAL_DIR SLURM_DIR

The cluster is built to fit the profile as written (its partition names, the largest thread and
memory request), so the test runs the profile a site uses, unmodified. `check` compares the SLURM
run with a local run of the same config and reads SLURM's job-completion log
(`JobCompType=jobcomp/filetxt`) to verify one completed job per rule with the profile's requests.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from pathlib import Path

import yaml

MARKER = "# written by wsi-lpd snakemake/slurm-test/run.sh"
FAKE_GPUS = 2  # GPUs of the test node (files, not devices: the CI config runs on the CPU)
# The CI cohort's DAG: one job per rule.
CI_RULES = ("demo_cohort", "tile", "patches", "train", "infer", "export", "evaluate", "report")
GPU_RULES = ("train", "infer")  # rules that declare `resources: gpu=1`
SKIP_TREE = ("logs", "benchmarks", ".snakemake")  # per-run bookkeeping, not results


def load_profile(profile: Path) -> dict:
    return yaml.safe_load((profile / "config.yaml").read_text())


def partitions(prof: dict) -> list[str]:
    """Partition names of the profile, the default one first."""
    names = [prof["default-resources"]["slurm_partition"]]
    for res in prof.get("set-resources", {}).values():
        name = res.get("slurm_partition")
        if name and name not in names:
            names.append(name)
    return names


def expected(prof: dict, rule: str) -> dict:
    """What the profile asks SLURM for one rule: partition, mem_mb, runtime (min), cpus."""
    req = {**prof["default-resources"], **prof.get("set-resources", {}).get(rule, {})}
    out = {
        "partition": req["slurm_partition"],
        "mem_mb": int(req["mem_mb"]),
        "runtime_min": int(req["runtime"]),
    }
    if rule in prof.get("set-threads", {}):
        out["cpus"] = int(prof["set-threads"][rule])
    return out


def conf(profile: Path, scratch: Path) -> str:
    """slurm.conf of a one-node cluster large enough for every request of the profile."""
    prof = load_profile(profile)
    host = socket.gethostname().split(".")[0]
    cpus = max([os.cpu_count() or 1, *prof.get("set-threads", {}).values()])
    mems = [prof["default-resources"]["mem_mb"]]
    mems += [r["mem_mb"] for r in prof.get("set-resources", {}).values() if "mem_mb" in r]
    names = partitions(prof)
    lines = [
        MARKER,
        f"ClusterName=wsilpdtest\nSlurmctldHost={host}\nSlurmUser=root\nAuthType=auth/munge",
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none",
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory",
        # the node is declared as large as the profile's largest request (CPUs and memory are
        # bookkeeping here: nothing binds or limits them), so the profile runs unmodified
        "SlurmdParameters=config_overrides\nReturnToService=2\nMinJobAge=600",
        "AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none",
        f"JobCompType=jobcomp/filetxt\nJobCompLoc={scratch}/jobcomp.log",
        f"StateSaveLocation={scratch}/state\nSlurmdSpoolDir={scratch}/spool",
        f"SlurmctldPidFile={scratch}/slurmctld.pid\nSlurmdPidFile={scratch}/slurmd.pid",
        f"SlurmctldLogFile={scratch}/slurmctld.log\nSlurmdLogFile={scratch}/slurmd.log",
        "GresTypes=gpu",
        f"NodeName={host} CPUs={cpus} RealMemory={max(mems)} Gres=gpu:{FAKE_GPUS} State=UNKNOWN",
    ]
    for i, name in enumerate(names):
        default = "YES" if i == 0 else "NO"
        lines.append(
            f"PartitionName={name} Nodes={host} Default={default} MaxTime=INFINITE State=UP"
        )
    return "\n".join(lines) + "\n"


def threads_flags(profile: Path) -> str:
    """`--cores N --set-threads r=n …`: a local run with the SLURM jobs' thread counts (torch's
    float sums depend on the thread count, so equal GeoJSON needs equal threads)."""
    threads = load_profile(profile).get("set-threads", {})
    pairs = " ".join(f"{rule}={n}" for rule, n in threads.items())
    return f"--cores {max([1, *threads.values()])}" + (f" --set-threads {pairs}" if pairs else "")


def gres_conf(scratch: Path) -> str:
    """Two GPUs backed by empty files: SLURM counts and hands them out (CUDA_VISIBLE_DEVICES)."""
    for i in range(FAKE_GPUS):
        (scratch / f"fake-gpu{i}").touch()
    return f"{MARKER}\nAutoDetect=off\nName=gpu File={scratch}/fake-gpu[0-{FAKE_GPUS - 1}]\n"


def files_of(results: Path) -> set[str]:
    return {
        str(p.relative_to(results))
        for p in results.rglob("*")
        if p.is_file() and p.relative_to(results).parts[0] not in SKIP_TREE
    }


def jobcomp_records(path: Path) -> list[dict[str, str]]:
    """One dict per line of a jobcomp/filetxt log (space-separated key=value pairs)."""
    records = []
    for line in path.read_text().splitlines():
        pairs = re.findall(r"(\w+)=(\S*)", line)
        if pairs:
            records.append(dict(pairs))
    return records


def gpus_of_jobs(path: Path) -> dict[str, int]:
    """SLURM job id → GPUs asked for, from `scontrol show job -o` (the job-completion log has no
    GPU count without an accounting daemon)."""
    out = {}
    for line in path.read_text().splitlines():
        job = re.search(r"\bJobId=(\d+)", line)
        gpus = re.search(r"\bTresPerJob=\S*gpu:(\d+)", line)
        if job:
            out[job[1]] = int(gpus[1]) if gpus else 0
    return out


def rule_of_jobs(workdir: Path) -> dict[str, str]:
    """SLURM job id → rule, from the plugin's logs `.snakemake/slurm_logs/rule_R/…/ID.log`."""
    out = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = next(p[5:] for p in log.relative_to(workdir).parts if p.startswith("rule_"))
        out[log.stem] = rule
    return out


def features(path: Path) -> list:
    """The features of a GeoJSON file without their ids (random UUIDs, new on every export)."""
    feats = json.loads(path.read_text())["features"]
    return [{k: v for k, v in f.items() if k != "id"} for f in feats]


def check(profile: Path, scratch: Path, local: Path, slurm: Path) -> list[str]:
    """Problems found (empty when the SLURM run matches the local run and the profile)."""
    prof = load_profile(profile)
    problems = []
    local_res, slurm_res = local / "results" / "ci", slurm / "results" / "ci"
    want, got = files_of(local_res), files_of(slurm_res)
    if not want:
        problems.append(f"{local_res}: the local run wrote no results")
    for name in sorted(want - got):
        problems.append(f"missing from the SLURM run: {name}")
    geojsons = sorted(n for n in want & got if n.startswith("geojson/") and ".geojson" in n)
    if not geojsons:
        problems.append("no GeoJSON to compare")
    for name in geojsons:
        if features(local_res / name) != features(slurm_res / name):
            problems.append(f"{name}: features differ between the local and the SLURM run")
    records = jobcomp_records(scratch / "jobcomp.log")
    rules = rule_of_jobs(slurm)
    gpus = gpus_of_jobs(scratch / "jobs.txt")
    per_rule: dict[str, list[dict[str, str]]] = {}
    for rec in records:
        if rec.get("JobState") != "COMPLETED":
            problems.append(f"SLURM job {rec.get('JobId')} ended {rec.get('JobState')}")
        per_rule.setdefault(rules.get(rec.get("JobId", ""), "?"), []).append(rec)
    for rule in CI_RULES:
        jobs = per_rule.pop(rule, [])
        if len(jobs) != 1:
            problems.append(f"rule {rule}: {len(jobs)} SLURM jobs (expected 1)")
            continue
        problems += check_job(rule, jobs[0], expected(prof, rule), gpus)
    for rule, jobs in per_rule.items():
        problems.append(f"unexpected SLURM job(s) {[j.get('JobId') for j in jobs]} (rule {rule})")
    return problems


def check_job(rule: str, rec: dict[str, str], want: dict, gpus: dict[str, int]) -> list[str]:
    """Compare one job-completion record (and its GPUs) with what the profile asked for."""
    tres = dict(kv.split("=", 1) for kv in rec.get("Tres", "").split(",") if "=" in kv)
    got = {
        "partition": rec.get("Partition"),
        "mem_mb": parse_mb(tres.get("mem", "0")),
        "runtime_min": int(rec.get("TimeLimit", "0")) if rec.get("TimeLimit", "").isdigit() else 0,
        "cpus": int(rec.get("ProcCnt", "0")),
        "gpus": gpus.get(rec.get("JobId", ""), -1),
    }
    want = {**want, "gpus": 1 if rule in GPU_RULES else 0}
    return [
        f"rule {rule} (job {rec.get('JobId')}): {key} {got[key]} (profile asks {value})"
        for key, value in want.items()
        if got[key] != value
    ]


def parse_mb(text: str) -> int:
    """SLURM's TRES memory ('32000M', '31.25G') in MB."""
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", text)
    return round(float(m[1]) * scale.get(m[2] or "M", 1)) if m else 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "conf":
        scratch = Path(argv[2])
        sys.stdout.write(conf(Path(argv[1]), scratch))
        (scratch / "gres.conf").write_text(gres_conf(scratch))
        return 0
    if len(argv) == 2 and argv[0] == "threads":
        print(threads_flags(Path(argv[1])))
        return 0
    if len(argv) == 5 and argv[0] == "check":
        problems = check(*(Path(a) for a in argv[1:]))
        for p in problems:
            print(f"slurm-test: FAIL: {p}")
        if not problems:
            print(
                f"slurm-test: OK: {len(CI_RULES)} rules, one SLURM job each, as the profile asked"
            )
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
