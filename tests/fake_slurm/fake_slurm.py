#!/usr/bin/env python3
"""A fake SLURM on one machine: `sbatch`, `srun`, `sacct` and `scontrol` (symlinks to this file) for tests.

Emulated, as far as submitit's SlurmExecutor and Lightning's SLURMEnvironment use it:
- `sbatch FILE` reads the `#SBATCH --key=value` lines (--array=A-B[%P], --output/--error with %A %a %j,
  --ntasks-per-node, --job-name, --cpus-per-task), prints `Submitted batch job <id>` and returns at once; a
  detached runner then runs the array tasks one after another as `bash FILE` in the submit folder, with the
  environment SLURM gives a batch step (SLURM_JOB_ID unique per task, SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID,
  SLURM_NTASKS = SLURM_NTASKS_PER_NODE, SLURM_NNODES=1, SLURM_NODEID=0, SLURM_JOB_NODELIST=localhost, ...).
- `srun [opts] CMD` runs SLURM_NTASKS (or -n) copies of CMD at once, SLURM_PROCID/SLURM_LOCALID 0..N-1, appending
  to its --output/--error (%A %a %j %t expanded), and returns the worst exit code.
- `sacct -j ID -o FIELDS --parsable2` reports each task PENDING, RUNNING, COMPLETED or FAILED (NODE_FAIL when the
  runner died), so submitit stops waiting for a job that cannot end.
- `scontrol requeue ID` only records the request in <state>/requeued: the job is not run again.
Not emulated: resources (GPUs, memory, CPUs, time limits, partitions: read by nobody), signals (--signal,
pre-emption), requeueing, parallel array tasks (%P), several nodes, scancel, squeue, other scontrol commands.
State lives in $FAKE_SLURM_DIR: next_id (the id counter), <id>/ (script, options, runner.pid and .log, <task>.state).
"""

import contextlib
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

if not os.environ.get("FAKE_SLURM_DIR"):
    sys.exit("fake SLURM: set FAKE_SLURM_DIR to a state folder")
STATE = Path(os.environ["FAKE_SLURM_DIR"])


def expand(pattern: str, env: dict, rank: str = "0") -> str:
    """SLURM's filename pattern: %A array job id, %a array index, %j job id, %t task rank."""
    job_id = env["SLURM_JOB_ID"]
    values = {"A": env.get("SLURM_ARRAY_JOB_ID", job_id), "a": env.get("SLURM_ARRAY_TASK_ID", ""), "j": job_id}
    return re.sub(r"%([Aajt%])", lambda m: {**values, "t": rank, "%": "%"}[m[1]], pattern)


def sbatch(args: list[str]) -> None:
    script = Path(args[-1]).read_text()
    words = [w for line in script.splitlines() if line.startswith("#SBATCH") for w in shlex.split(line[7:])]
    opts = dict(w[2:].split("=", 1) for w in [*words, *args[:-1]] if w.startswith("--") and "=" in w)
    array = re.fullmatch(r"(\d+)(?:-(\d+))?(?:%\d+)?", opts.get("array", "0"))  # 0-1%32 or 3 (one index)
    tasks = list(range(int(array[1]), int(array[2] or array[1]) + 1)) if "array" in opts else [None]
    (STATE / "next_id").touch()
    with open(STATE / "next_id", "r+") as counter:  # the first id from the clock: submitit caches states by id
        fcntl.flock(counter, fcntl.LOCK_EX)
        job_id = int(counter.read() or int(time.time()) % 10**6 * 100)
        counter.seek(0)
        counter.write(str(job_id + len(tasks)))  # one id per array task
        counter.truncate()
    folder = STATE / str(job_id)
    folder.mkdir()
    (folder / "script.sh").write_text(script)  # SLURM runs the file as it was at submission
    (folder / "options.json").write_text(json.dumps({**opts, "tasks": tasks, "cwd": os.getcwd()}))
    with open(folder / "runner.log", "w") as log:  # not sbatch's stdout: submitit reads that pipe to its end
        runner = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "run", str(job_id)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    (folder / "runner.pid").write_text(str(runner.pid))
    print(f"Submitted batch job {job_id}")


def run(job_id: str) -> None:
    """The detached runner: each array task in turn, as a batch step."""
    folder = STATE / job_id
    opts = json.loads((folder / "options.json").read_text())
    array = opts["tasks"] != [None]
    for i, task in enumerate(opts["tasks"]):
        name = str(task) if array else "0"
        ntasks = opts.get("ntasks-per-node", "1")
        env = {**os.environ, "SLURM_JOB_ID": str(int(job_id) + i), "SLURM_JOB_NAME": opts.get("job-name", "sbatch")}
        env.update(SLURM_NTASKS=ntasks, SLURM_NTASKS_PER_NODE=ntasks, SLURM_NNODES="1", SLURM_JOB_NUM_NODES="1")
        env.update(SLURM_NODEID="0", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_JOB_NODELIST="localhost")
        env.update(SLURM_NODELIST="localhost", SLURM_SUBMIT_DIR=opts["cwd"], SLURM_CLUSTER_NAME="fake")
        env.update({"SLURM_CPUS_PER_TASK": opts["cpus-per-task"]} if "cpus-per-task" in opts else {})
        env.update({"SLURM_ARRAY_JOB_ID": job_id, "SLURM_ARRAY_TASK_ID": name} if array else {})
        out = Path(expand(opts.get("output", "slurm-%A_%a.out" if array else "slurm-%j.out"), env))
        err = Path(expand(opts.get("error", str(out)), env))
        for _ in range(600):  # SLURM cannot open a log in a missing folder; submitit makes it after sbatch returns
            if out.parent.is_dir() and err.parent.is_dir():
                break
            time.sleep(0.1)
        set_state(folder, name, "RUNNING")
        with open(out, "a") as stdout, open(err, "a") as stderr:
            code = subprocess.call(
                ["bash", str(folder / "script.sh")], cwd=opts["cwd"], env=env, stdout=stdout, stderr=stderr
            )
        set_state(folder, name, "COMPLETED" if code == 0 else "FAILED")
    (folder / "runner.pid").unlink()


def set_state(folder: Path, task: str, state: str) -> None:
    (folder / f"{task}.tmp").write_text(state)
    (folder / f"{task}.tmp").replace(folder / f"{task}.state")  # sacct never reads half a file


SRUN_VALUES = {
    "-o": "output",
    "--output": "output",
    "-e": "error",
    "--error": "error",
    "-n": "ntasks",
    "--ntasks": "ntasks",
}


def srun(args: list[str]) -> int:
    """Runs CMD once per task, all at once; other options (--unbuffered, --x=y) are dropped."""
    opts = {}
    while args and args[0].startswith("-"):
        flag, _, value = args.pop(0).partition("=")
        if flag in SRUN_VALUES:
            opts[SRUN_VALUES[flag]] = value or args.pop(0)
    with contextlib.ExitStack() as files:
        procs = []
        for rank in range(int(opts.get("ntasks", os.environ.get("SLURM_NTASKS", "1")))):
            env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
            out, err = (
                files.enter_context(open(expand(opts[k], env, str(rank)), "a")) if k in opts else None
                for k in ("output", "error")
            )
            procs.append(subprocess.Popen(args, env=env, stdout=out, stderr=err or out))
        codes = [p.wait() for p in procs]
    return max(code if code >= 0 else 128 - code for code in codes)  # killed by signal N: 128 + N, as a shell


def sacct(args: list[str]) -> None:
    fields = args[args.index("-o") + 1].split(",") if "-o" in args else ["JobID", "State"]
    ids = [j for i, a in enumerate(args) if a == "-j" for j in args[i + 1].split(",")]
    print("|".join(fields))
    for job_id in ids:
        folder = STATE / job_id.split("_")[0]
        for task in json.loads((folder / "options.json").read_text())["tasks"] if folder.is_dir() else []:
            state = folder / f"{0 if task is None else task}.state"
            row = {"JobID": folder.name if task is None else f"{folder.name}_{task}", "NodeList": "localhost"}
            row["State"] = state.read_text() if state.is_file() else "PENDING"
            if row["State"] in ("PENDING", "RUNNING") and not runner_alive(folder):
                row["State"] = "NODE_FAIL"  # the runner died: a final state, so submitit stops waiting
            print("|".join(row.get(field, "") for field in fields))


def runner_alive(folder: Path) -> bool:
    try:
        os.kill(int((folder / "runner.pid").read_text()), 0)
    except (OSError, ValueError):  # no pid file (the runner has finished), or no such process
        return False
    return True


def scontrol(args: list[str]) -> int:
    if args[:1] != ["requeue"]:
        sys.exit(f"fake scontrol: only `scontrol requeue ID` is emulated, got {args}")
    with open(STATE / "requeued", "a") as log:
        log.write(" ".join(args[1:]) + "\n")
    return 0


if __name__ == "__main__":
    command, args = Path(sys.argv[0]).name, sys.argv[1:]
    if command == "fake_slurm.py" and args[:1] == ["run"]:  # sbatch's detached runner
        run(args[1])
    else:
        sys.exit({"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol}[command](args))
