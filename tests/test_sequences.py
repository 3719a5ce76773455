"Properties of the shared sequence layer: windows cover every frame, reassembly is exact, augmentation moves every frame and target alike."
import random
import numpy as np, torch
import pytest
from hypothesis import given, settings, strategies as st
from fastai.torch_core import TensorMask
from fastai.data.block import DataBlock
from fastai.data.transforms import IndexSplitter
from biofastai.core import TensorSequence, TensorWeights, TensorMultiChannel, EmptyDataError
from biofastai.sequences import backprop_windows, reassemble, SeqDihedral, SeqAffine, SequenceBlock

frames, lengths = st.integers(1, 60), st.integers(1, 16)

@settings(max_examples=300, deadline=None, derandomize=True, database=None)   # the same examples every run
@given(frames, lengths)
def test_windows_cover_every_frame_once(n, length):
    idx, valid = backprop_windows(n, length)
    assert idx.shape==valid.shape and idx.shape[1]==length and idx.shape[0]==-(-n//length)
    assert idx.min()>=0 and idx.max()<n
    assert sorted(idx[valid].tolist())==list(range(n))            # every frame exactly once among the valid positions
    assert valid.sum(1).tolist()==[min(length, n-s) for s in range(0, n, length)]
    for w, v in zip(idx, valid):
        assert v[:v.sum()].all() and not v[v.sum():].any()           # valid frames first, then the padding
        assert (np.abs(np.diff(w))==1).all() or len(set(w))==1        # ping-pong: neighbours are neighbouring frames
        assert set(w[~v]) <= set(w[v])                                # padding only repeats the window's own frames

@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(frames, lengths, st.integers(0, 3))
def test_reassembly_is_exact(n, length, extra_dims):
    series = np.random.default_rng(n*100+length).random((n,)+(2,)*extra_dims)
    idx, valid = backprop_windows(n, length)
    np.testing.assert_array_equal(reassemble(series[idx], idx, valid, n), series)
    t = torch.from_numpy(series)
    assert torch.equal(reassemble(t[idx], idx, valid, n), t)

def test_seed_examples():
    np.testing.assert_array_equal(backprop_windows(3, 6)[0], [[0,1,2,1,0,1]])
    np.testing.assert_array_equal(backprop_windows(9, 6)[0], [[0,1,2,3,4,5],[6,7,8,7,6,7]])
    with pytest.raises(EmptyDataError): backprop_windows(0, 6)

def _plain(*ts): return [t.as_subclass(torch.Tensor) for t in ts]

@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 10_000), st.integers(8, 24), st.integers(8, 24), st.integers(1, 5))
def test_augmentation_same_for_every_frame_and_target(seed, h, w, n):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(h, w, generator=g)
    mask = (base>0.5).long()
    item = (TensorSequence(torch.stack([mask.float()*(t+1) for t in range(n)])[:,None]), TensorMultiChannel(mask.float()[None]),
            TensorMask(mask), TensorWeights(torch.stack([mask.float()]*n)), TensorWeights(torch.ones(h, w)))
    random.seed(seed)
    for tfm in (SeqDihedral(), SeqAffine(max_rotate=20, max_zoom=1.2, max_translate=0.1, p=1.)):
        seq, img, m, wts, inside = _plain(*tfm(item, split_idx=0))
        assert seq.shape==item[0].shape and m.shape==mask.shape and wts.shape==(n, h, w)
        for t in range(n): torch.testing.assert_close(seq[t,0]/(t+1), seq[0,0])
        torch.testing.assert_close(img[0], seq[0,0])
        assert torch.equal(wts, torch.stack([m.float()]*n))
        if isinstance(tfm, SeqDihedral): assert torch.equal(m.float(), seq[0,0])   # a flip is exact: masks and images agree pixel for pixel
        else:   # bilinear vs nearest differ where the neighbourhood is mixed, and outside the frame (images reflect, labels are 0):
            sure = ((seq[0,0] < 1e-4) | (seq[0,0] > 1-1e-4)) & (inside > 0.5)   # inside, where bilinear gives exactly 0 or 1, nearest agrees
            assert torch.equal(seq[0,0][sure] > 0.5, m.bool()[sure])

def test_block_with_augmentation_batches():
    seqs = [np.random.default_rng(i).random((4,12,12)).astype(np.float32) for i in range(6)]
    dls = DataBlock(blocks=SequenceBlock(), splitter=IndexSplitter([5]), item_tfms=[SeqDihedral(), SeqAffine()]).dataloaders(seqs, bs=3)
    xb, = dls.one_batch()
    assert isinstance(xb, TensorSequence) and xb.shape==(3,4,1,12,12)
