"""Masked pre-training examples: salient span masking as REALM, and the random-token and random-span
alternatives, drawn reproducibly and batched with the block each sentence came from."""
import numpy as np
import pytest
import torch

from realm_fairseq.data import BlockCorpus
from realm_fairseq.data.masking import MaskedExamplesDataset, random_token_ids


@pytest.fixture(scope="module")
def corpus(wiki_corpus):
    return BlockCorpus(wiki_corpus)


def dataset(corpus, masking, seed=1):
    ex = corpus.examples
    return MaskedExamplesDataset(ex, np.arange(len(ex)), corpus.dictionary, masking, seed)


def masked_positions(item, pad):
    return torch.nonzero(item["target"].ne(pad)).flatten() - 1  # positions within x


def test_salient_span_masking_hides_exactly_one_salient_span(corpus):
    ds = dataset(corpus, "salient_span")
    ex, d = corpus.examples, corpus.dictionary
    assert 0 < len(ds) < len(ex) and (ex.spans_per_example[ds.example_ids] > 0).all()
    for index in range(0, len(ds), 53):
        item = ds[index]
        example = int(ds.example_ids[index])
        tokens = ex.tokens(example)
        positions = masked_positions(item, d.pad()).tolist()
        assert (positions[0], positions[-1] + 1) in ex.salient_spans(example)
        assert positions == list(range(positions[0], positions[-1] + 1))
        assert item["source"][0] == d.bos() and item["source"][-1] == d.eos()
        x = item["source"][1:-1]
        assert (x[positions] == d.index("[MASK]")).all()
        keep = torch.ones(len(tokens), dtype=torch.bool)
        keep[positions] = False
        assert torch.equal(x[keep], tokens[keep])
        assert torch.equal(item["target"][1:-1][positions], tokens[positions])
        assert item["block"] == int(ex.source_block[example])


def test_masks_are_reproducible_and_change_with_the_epoch(corpus):
    ds = dataset(corpus, "salient_span")
    several = [i for i in range(len(ds)) if len(corpus.examples.salient_spans(int(ds.example_ids[i]))) >= 3][:60]
    first = [ds[i]["target"].tolist() for i in several]
    assert first == [dataset(corpus, "salient_span")[i]["target"].tolist() for i in several]
    ds.set_epoch(2)
    assert sum(a != ds[i]["target"].tolist() for a, i in zip(first, several)) > len(several) // 3


def test_random_token_masking_follows_bert(corpus):
    ds = dataset(corpus, "random_token")
    d, mask = corpus.dictionary, corpus.dictionary.index("[MASK]")
    replacements = set(random_token_ids(d).tolist())
    chosen = total = as_mask = as_random = as_is = 0
    for index in range(0, len(ds), 11):
        item = ds[index]
        positions = masked_positions(item, d.pad())
        x, original = item["source"][1:-1], item["target"][1:-1]
        chosen += len(positions)
        total += len(x)
        for p in positions.tolist():
            if x[p] == mask:
                as_mask += 1
            elif x[p] == original[p]:
                as_is += 1
            else:
                assert int(x[p]) in replacements
                as_random += 1
    assert 0.13 < chosen / total < 0.19
    assert 0.75 < as_mask / chosen < 0.85 and 0.06 < as_random / chosen < 0.14 and 0.06 < as_is / chosen < 0.14
    assert d.index("[unused0]") not in replacements and d.index("[CLS]") not in replacements


def test_random_span_masking_masks_contiguous_runs(corpus):
    ds = dataset(corpus, "random_span")
    d = corpus.dictionary
    lengths, chosen, total = [], 0, 0
    for index in range(0, len(ds), 13):
        item = ds[index]
        positions = masked_positions(item, d.pad()).numpy()
        assert (item["source"][1:-1][positions] == d.index("[MASK]")).all()
        runs = np.split(positions, np.flatnonzero(np.diff(positions) > 1) + 1)
        lengths += [len(r) for r in runs]
        chosen, total = chosen + len(positions), total + len(item["source"]) - 2
    assert 0.13 < chosen / total < 0.22 and np.mean(lengths) > 1.5


def test_batches_carry_targets_and_the_blocks_to_exclude(corpus):
    ds = dataset(corpus, "salient_span")
    order = ds.ordered_indices()
    assert (np.diff(ds.sizes[order]) >= 0).all()  # by length, for batching by tokens
    batches = ds.batch_by_size(order, max_tokens=1024)
    assert all(len(b) * ds.sizes[b].max() <= 1024 for b in batches)
    batch = ds.collater([ds[i] for i in batches[len(batches) // 2]])
    src, tgt = batch["net_input"]["src_tokens"], batch["target"]
    assert src.shape == tgt.shape and batch["exclude_blocks"].shape == (src.shape[0],)
    assert batch["ntokens"] == int(tgt.ne(corpus.dictionary.pad()).sum())
    assert torch.equal(batch["net_input"]["src_lengths"], src.ne(corpus.dictionary.pad()).sum(1))
