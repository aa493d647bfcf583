"""Peak host memory and time of per-token log-probabilities (forward + backward) against `logprob_chunk_size`.

    python tests/bench/bench_logprobs.py                                 # 2 x 1024 tokens, vocabulary 76,800
    python tests/bench/bench_logprobs.py --rows 4 --length 2048 --chunks 0,1024

Each chunk size runs in a fresh process: a small looped model body (hidden 256, 2 layers, 2 loops) with the released
vocabulary, the sum of the log-probabilities of a random batch, its backward. Reported: the process's peak resident
set above its resident set just before the scoring (model built, one warm-up pass at chunk size 1 done), and the
seconds of the scored pass. Every chunk size must give the first one's log-probability sum and lm_head gradient
(relative 1e-5) before any figure is printed. The full fp32 logits of the batch are rows x length x vocabulary x 4 bytes. The figures
go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

GIB = 1024**3

ONE = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    from loopcoder.model import LoopCoderConfig, LoopCoderForCausalLM
    from loopcoder.postrain.runtime.logprobs import token_log_probs

    rows, length, vocab, chunk = (int(v) for v in sys.argv[1:5])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = LoopCoderForCausalLM(LoopCoderConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_loops=2, loop_window=64, max_position_embeddings=length + 1,
    ))
    ids = torch.randint(0, vocab, (rows, length + 1))

    def run(size):
        model.zero_grad(set_to_none=True)
        scores = token_log_probs(model, ids[:, 1:], chunk_size=size, positions=slice(0, -1), input_ids=ids)
        total = scores.log_probs.sum()
        total.backward()
        return float(total)

    small = ids[:, :65]
    model.zero_grad(set_to_none=True)
    token_log_probs(model, small[:, 1:], chunk_size=16, positions=slice(0, -1), input_ids=small).log_probs.sum().backward()
    before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    started = time.perf_counter()
    logp_sum = run(chunk)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad_sum = float(model.lm_head.weight.grad.double().abs().sum())
    print(json.dumps(dict(chunk=chunk, before=before, peak=peak, seconds=seconds, logp=logp_sum, grad=grad_sum)))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=76800)
    parser.add_argument("--chunks", default="0,2048,1024,256")
    args = parser.parse_args()
    full = args.rows * args.length * args.vocab * 4
    print(f"{args.rows} x {args.length} tokens, vocabulary {args.vocab}: full fp32 logits {full / GIB:.2f} GiB")
    print("| logprob_chunk_size | peak RSS above start | / full fp32 logits | seconds |")
    print("|---|---|---|---|")
    reference = None
    for chunk in (int(c) for c in args.chunks.split(",")):
        out = subprocess.run(
            [sys.executable, "-c", ONE, str(args.rows), str(args.length), str(args.vocab), str(chunk)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        # the same log-probabilities and lm_head gradient for every chunk size, or no figures at all
        reference = reference or result
        for key in ("logp", "grad"):
            if abs(result[key] - reference[key]) > 1e-5 * abs(reference[key]):
                sys.exit(f"chunk {chunk}: {key} {result[key]!r} differs from chunk {reference['chunk']}'s")
        grown = result["peak"] - result["before"]
        print(f"| {chunk} | {grown / GIB:.2f} GiB | {grown / full:.2f} | {result['seconds']:.1f} |")


if __name__ == "__main__":
    main()
