#!/usr/bin/env bash
# Launch `loopcoder train sft` with one process, torchrun or the deepspeed launcher, on one node or many.
#
#   jobs/launch/train_sft.sh                                         # CONFIG, one process
#   NPROC=2 jobs/launch/train_sft.sh zero_stage=2                    # torchrun, 2 processes, an override
#   LAUNCHER=deepspeed NPROC=8 jobs/launch/train_sft.sh              # deepspeed launcher, one node
#   LAUNCHER=deepspeed HOSTFILE=jobs/launch/hostfile.example jobs/launch/train_sft.sh     # many nodes (ssh)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node-0 NPROC=8 jobs/launch/train_sft.sh             # torchrun, run on each node
#   DRY_RUN=1 NPROC=2 jobs/launch/train_sft.sh                       # print the command only
#
# Arguments after the script are config overrides (name=value). On a machine without CUDA the trainer sets
# DS_ACCELERATOR=cpu and uses gloo; OMP_NUM_THREADS defaults to 1 per process there.
set -euo pipefail

CONFIG=${CONFIG:-jobs/sft/sample_tiny.yaml}
LAUNCHER=${LAUNCHER:-torchrun}
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29517}
HOSTFILE=${HOSTFILE:-}
LOOPCODER=${LOOPCODER:-$(command -v loopcoder || echo loopcoder)}

if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

if [[ "$LAUNCHER" == "deepspeed" ]]; then
    cmd=(deepspeed --no_local_rank --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
    if [[ -n "$HOSTFILE" ]]; then
        cmd+=(--hostfile "$HOSTFILE")
    else
        cmd+=(--num_accelerators "$NPROC")
    fi
    cmd+=("$LOOPCODER" train sft --config "$CONFIG" "$@")
elif [[ "$NPROC" == "1" && "$NNODES" == "1" ]]; then
    cmd=("$LOOPCODER" train sft --config "$CONFIG" "$@")
else
    cmd=(torchrun --nproc_per_node "$NPROC" --nnodes "$NNODES" --node_rank "$NODE_RANK"
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
        -m loopcoder.jobs.cli train sft --config "$CONFIG" "$@")
fi

echo "${cmd[*]}"
if [[ -z "${DRY_RUN:-}" ]]; then
    exec "${cmd[@]}"
fi
