#!/usr/bin/env bash
# Launch `loopcoder train grpo` with one process, torchrun or the deepspeed launcher, on one node or many.
#
#   jobs/launch/train_grpo.sh max_steps=2                           # one process, jobs/rl/mined_tiny.yaml: the
#                                                                   # mined problems, the SFT stage's model
#   CONFIG=jobs/rl/print_number_tiny.yaml jobs/launch/train_grpo.sh model_name_or_path=null   # the toy task
#   NPROC=8 CONFIG=jobs/rl/code_contests.yaml jobs/launch/train_grpo.sh zero_stage=3    # torchrun, one node
#   LAUNCHER=deepspeed HOSTFILE=jobs/launch/hostfile.example jobs/launch/train_grpo.sh  # many nodes (ssh)
#   jobs/launch/train_grpo.sh --dry-run                              # print the command only (or DRY_RUN=1)
#
# Arguments are config overrides (name=value). Knobs and defaults: jobs/launch/launch.sh, docs/launch.md.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" grpo "$@"
