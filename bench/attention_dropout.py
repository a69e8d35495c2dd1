"""A training step of a MiniLM-sized reader with BERT's attention dropout (0.1) against none, in the same run.

    python bench/attention_dropout.py [--rows 8] [--length 224] [--steps 5] [--device cpu]

The step is the forward and backward of our encoder (``realm_minilm`` sizes: 6 layers, 384 wide, 12 heads)
on ``--rows`` joined sequences ``[CLS] x [SEP] z [SEP]`` of ``--length`` wordpieces, as the span reader
reads them in open-QA fine-tuning (of lengths from 3/4 of it to all of it, padded); hidden-state dropout
is 0.1 on both sides. On CPU torch's fused attention falls back to a slower path for attention dropout
(measured here: a step costs 1.18 times as much), which is why the demo and ``examples/realm/finetune_qa.sh``
train with ``--attention-dropout 0``.
Reports the median step times and their ratio; the ratio is information (it depends on the torch build and
the CPU), no goal.
"""
import argparse
import statistics
import time

import torch

from goals import info_line  # bench/goals.py (this script's directory)


def encoder(attention_dropout: float, device: str):
    from fairseq.data import Dictionary

    from realm_fairseq.models.encoder import EncoderConfig, TextEncoder

    dictionary = Dictionary()
    for i in range(30522):
        dictionary.add_symbol(str(i))
    cfg = EncoderConfig(encoder_layers=6, encoder_embed_dim=384, encoder_ffn_embed_dim=1536,
                        encoder_attention_heads=12, dropout=0.1, attention_dropout=attention_dropout)
    return TextEncoder(cfg, dictionary).to(device).train()


def step_seconds(model, tokens, segments, steps: int, device: str) -> float:
    times = []
    for i in range(steps + 1):  # the first is untimed
        start = time.perf_counter()
        hidden, _ = model(tokens, segments)
        hidden.float().pow(2).mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="sequences in a batch")
    parser.add_argument("--length", type=int, default=224, help="wordpieces per sequence (question + block)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each")
    parser.add_argument("--device", default="cpu", help="torch device")
    args = parser.parse_args()
    torch.manual_seed(1)
    tokens = torch.randint(10, 30000, (args.rows, args.length), device=args.device)
    lengths = torch.linspace(args.length * 3 // 4, args.length, args.rows).long()  # rows read together differ
    tokens[torch.arange(args.length) >= lengths[:, None]] = 1  # fairseq's padding
    segments = (torch.arange(args.length, device=args.device) > 16).long().expand(args.rows, -1)
    seconds = {}
    for p in (0.1, 0.0):
        seconds[p] = step_seconds(encoder(p, args.device), tokens, segments, args.steps, args.device)
        print(f"attention dropout {p}: {seconds[p] * 1000:.0f} ms a step ({args.rows} x {args.length} wordpieces, "
              f"forward + backward, {args.device}, {torch.get_num_threads()} threads)")
    print(info_line("step with attention dropout 0.1 / without", seconds[0.1] / seconds[0.0],
                    "depends on the torch build and the CPU"))


if __name__ == "__main__":
    main()
