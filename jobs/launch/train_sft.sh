#!/usr/bin/env bash
# Launch `loopcoder train sft` with one process, torchrun or the deepspeed launcher, on one node or many.
#
#   jobs/launch/train_sft.sh                                         # CONFIG, one process
#   NPROC=2 jobs/launch/train_sft.sh zero_stage=2                    # torchrun, 2 processes, an override
#   LAUNCHER=deepspeed NPROC=8 jobs/launch/train_sft.sh              # deepspeed launcher, one node
#   LAUNCHER=deepspeed HOSTFILE=jobs/launch/hostfile.example jobs/launch/train_sft.sh     # many nodes (ssh)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node-0 NPROC=8 jobs/launch/train_sft.sh             # torchrun, run on each node
#   NPROC=2 jobs/launch/train_sft.sh --dry-run                       # print the command only (or DRY_RUN=1)
#
# Arguments are config overrides (name=value). Knobs and defaults: jobs/launch/launch.sh, docs/launch.md.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" sft "$@"
