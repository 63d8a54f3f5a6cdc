#!/usr/bin/env bash
# System test of the Slurm launch: starts a real single-node Slurm (cluster/slurm/local-slurm), submits
# cluster/slurm/moe-cluster.sbatch with the bundled model (1 coordinator + 2 workers, MPI data plane
# through srun --mpi=pmix), asks it "add 123+456=" over gRPC, expects "579", then cancels the job and
# checks that no process of it is left. Every wait has a deadline.
#   tests/slurm_test.sh BIN_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "${1:?usage: slurm_test.sh BIN_DIR}" && pwd)
work=$(mktemp -d)
job=""
cleanup() {
  [[ -n "$job" ]] && scancel "$job" 2>/dev/null || true
  "$root/cluster/slurm/local-slurm" stop "$work/slurm" || true
  pkill -KILL -f "$bin/moe-mpi-cluster" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "slurm_test: FAIL: $*" >&2; [[ -f "$work/job.out" ]] && sed 's/^/  job: /' "$work/job.out" >&2; exit 1; }

eval "$("$root/cluster/slurm/local-slurm" start "$work/slurm")"
job=$(MOE_MODEL="$root/models/tiny-moe" MOE_BIN="$bin" sbatch --parsable --ntasks=3 --output="$work/job.out" \
      --chdir="$work" "$root/cluster/slurm/moe-cluster.sbatch")
echo "slurm_test: submitted job $job"
address=""
for _ in $(seq 1200); do  # up to 120 s to schedule, start and load
  address=$(sed -n 's/^listening on //p' "$work/job.out" 2>/dev/null | head -1 || true)
  [[ -n "$address" ]] && break
  state=$(squeue -h -j "$job" -o %T 2>/dev/null || true)
  [[ -z "$state" && -f "$work/job.out" ]] && fail "the job ended before serving"
  sleep 0.1
done
[[ -n "$address" ]] || fail "the job did not serve within 120 s"
echo "slurm_test: job $job serves on $address"
answer=$(timeout 60 "$bin/moe-client" --server "$address" --prompt "add 123+456=" --max-tokens 8 2>&1) || fail "moe-client: $answer"
first_line=$(head -1 <<<"$answer")
[[ "$first_line" == "579" ]] || fail "expected 579, got: $answer"
echo "slurm_test: answered $first_line"
grep -q "^worker pid" "$work/job.out" || fail "no worker started"
scancel "$job"
for _ in $(seq 300); do  # up to 30 s for the job to end
  [[ -z "$(squeue -h -j "$job" 2>/dev/null)" ]] && break
  sleep 0.1
done
[[ -z "$(squeue -h -j "$job" 2>/dev/null)" ]] || fail "the job did not end within 30 s of scancel"
for _ in $(seq 100); do
  pgrep -f "$bin/moe-mpi-cluster" >/dev/null || break
  sleep 0.1
done
! pgrep -f "$bin/moe-mpi-cluster" >/dev/null || fail "cluster processes outlived the job"
job=""
echo "slurm_test: PASS"
