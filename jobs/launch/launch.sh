#!/usr/bin/env bash
# Launch `loopcoder train sft|grpo` with one process, torchrun or the deepspeed launcher, on one node or many.
# train_sft.sh and train_grpo.sh call this with their command; docs/launch.md has every command and knob.
#
#   jobs/launch/launch.sh sft|grpo [--dry-run] [--print-config] [name=value ...]
#
# Knobs (environment): CONFIG (YAML), LAUNCHER (torchrun | deepspeed), NPROC (processes per node),
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, HOSTFILE (deepspeed launcher over ssh), LOOPCODER (the
# `loopcoder` executable the deepspeed launcher runs), PYTHON (interpreter for `-m loopcoder.jobs.cli`).
# Under Slurm, NNODES, NODE_RANK and MASTER_ADDR default to the allocation's. --dry-run (or DRY_RUN=1)
# prints the command, quoted so that it can be pasted back, and does not run it.
set -euo pipefail

usage="usage: $0 sft|grpo [--dry-run] [--print-config] [name=value ...]"
COMMAND=${1:-}
case "$COMMAND" in
    sft) default_config=jobs/sft/sample_tiny.yaml ;;
    grpo) default_config=jobs/rl/mined_tiny.yaml ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
shift

overrides=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --print-config) overrides+=("$arg") ;;  # the trainer prints the resolved config and exits
        *=*) overrides+=("$arg") ;;
        *) echo "unknown argument '$arg' (overrides are name=value pairs)" >&2; echo "$usage" >&2; exit 2 ;;
    esac
done

CONFIG=${CONFIG:-$default_config}
LAUNCHER=${LAUNCHER:-torchrun}
NPROC=${NPROC:-1}
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
if [[ -z "${MASTER_ADDR:-}" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
fi
MASTER_PORT=${MASTER_PORT:-29517}
HOSTFILE=${HOSTFILE:-}
PYTHON=${PYTHON:-python3}
LOOPCODER=${LOOPCODER:-$(command -v loopcoder || echo loopcoder)}

if [[ "$LAUNCHER" != torchrun && "$LAUNCHER" != deepspeed ]]; then
    echo "LAUNCHER must be torchrun or deepspeed, got '$LAUNCHER'" >&2
    exit 2
fi
if [[ "$NNODES" != 1 && -z "${MASTER_ADDR:-}" && -z "$HOSTFILE" ]]; then
    echo "NNODES=$NNODES: set MASTER_ADDR to the first node's address (every node must reach it)" >&2
    exit 2
fi

if [[ "$LAUNCHER" == deepspeed ]]; then
    # --no_local_rank: `loopcoder` reads the rank from the environment
    cmd=(deepspeed --no_local_rank)
    if [[ -n "$HOSTFILE" ]]; then
        # the launcher reaches every host of the hostfile over ssh; the master defaults to the first host
        cmd+=(--hostfile "$HOSTFILE")
        [[ -n "${MASTER_ADDR:-}" ]] && cmd+=(--master_addr "$MASTER_ADDR")
    else
        cmd+=(--num_accelerators "$NPROC" --master_addr "${MASTER_ADDR:-127.0.0.1}")
    fi
    cmd+=(--master_port "$MASTER_PORT" "$LOOPCODER" train "$COMMAND" --config "$CONFIG")
elif [[ "$NPROC" == 1 && "$NNODES" == 1 ]]; then
    cmd=("$PYTHON" -m loopcoder.jobs.cli train "$COMMAND" --config "$CONFIG")
else
    cmd=(torchrun --nproc_per_node "$NPROC" --nnodes "$NNODES" --node_rank "$NODE_RANK"
        --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "$MASTER_PORT"
        -m loopcoder.jobs.cli train "$COMMAND" --config "$CONFIG")
fi
cmd+=(${overrides[@]+"${overrides[@]}"})

printf '%q ' "${cmd[@]}" | sed 's/ $//'
echo
if [[ -n "${DRY_RUN:-}" ]]; then
    exit 0
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    # CPU: DeepSpeed's CPU accelerator and one thread per process unless told otherwise
    export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
exec "${cmd[@]}"
