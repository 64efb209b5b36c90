import pytest
import torch

from trellis.data.packing import PackedSampler, chop, join_documents, validation_windows
from trellis.errors import TrellisError

DOCS = [list(range(100 + 10 * i, 100 + 10 * i + 3 + i % 5)) for i in range(30)]


def test_join_puts_separator_after_each_document():
    stream = join_documents([[5, 6], [7]], sep_id=0)
    assert stream.tolist() == [5, 6, 0, 7, 0]


def test_windows_overlap_by_one_so_every_pair_is_a_target_once():
    stream = torch.arange(23)
    w = chop(stream, seq_len=5)
    assert w.shape == (4, 6)
    assert w[0].tolist() == [0, 1, 2, 3, 4, 5] and w[1, 0] == 5
    pairs = {(int(a), int(b)) for row in w for a, b in zip(row[:-1], row[1:], strict=True)}
    assert len(pairs) == 4 * 5 and (19, 20) in pairs and (20, 21) not in pairs
    assert chop(torch.arange(3), seq_len=5).shape == (0, 6)


def test_sampler_is_deterministic_and_covers_an_epoch():
    a = PackedSampler(DOCS, 0, seq_len=8, batch_size=4, seed=3)
    b = PackedSampler(DOCS, 0, seq_len=8, batch_size=4, seed=3)
    c = PackedSampler(DOCS, 0, seq_len=8, batch_size=4, seed=4)
    batches_a = [a.next_batch() for _ in range(5)]
    assert all(torch.equal(x, b.next_batch()) for x in batches_a)
    assert not all(torch.equal(x, c.next_batch()) for x in batches_a)
    assert batches_a[0].shape == (4, 9)
    # one epoch serves every window of that epoch's packing exactly once
    s = PackedSampler(DOCS, 0, seq_len=8, batch_size=1, seed=0)
    n = s.windows_per_epoch()
    windows, _ = s._epoch(0)
    served = torch.cat([s.next_batch() for _ in range(n)])
    assert sorted(map(tuple, served.tolist())) == sorted(map(tuple, windows.tolist()))
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["offset"] == 0


def test_sampler_resume_continues_the_same_stream():
    straight = PackedSampler(DOCS, 0, seq_len=8, batch_size=5, seed=1)
    expected = [straight.next_batch() for _ in range(20)]  # crosses several epochs
    first = PackedSampler(DOCS, 0, seq_len=8, batch_size=5, seed=1)
    for _ in range(7):
        first.next_batch()
    state = first.state_dict()
    resumed = PackedSampler(DOCS, 0, seq_len=8, batch_size=5, seed=1)
    resumed.load_state_dict(state)
    assert all(torch.equal(expected[i], resumed.next_batch()) for i in range(7, 20))
    with pytest.raises(TrellisError, match="corpus or seed changed"):
        PackedSampler(DOCS[:-1], 0, seq_len=8, batch_size=5, seed=1).load_state_dict(state)


def test_validation_windows_are_fixed_and_bounded():
    v1 = validation_windows(DOCS, 0, seq_len=8, max_windows=4)
    v2 = validation_windows(DOCS, 0, seq_len=8, max_windows=4)
    assert torch.equal(v1, v2) and v1.shape == (4, 9)
    assert validation_windows(DOCS, 0, seq_len=8, max_windows=10_000).shape[0] == chop(join_documents(DOCS, 0), 8).shape[0]
    short = validation_windows([[1, 2]], 0, seq_len=8, max_windows=4)
    assert short.tolist() == [[1, 2, 0]]


def test_corpus_smaller_than_a_window_fails():
    with pytest.raises(TrellisError, match="fewer than one window"):
        PackedSampler([[1, 2]], 0, seq_len=8, batch_size=2)
