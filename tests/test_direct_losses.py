"""Unit tests of dfqbench/blocks/direct_{synthesis,finetune}.py: shapes, switches, and that nothing reads a tensor
value back to the host (the operations a CUDA graph cannot capture, as tests/test_engine.py lists them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dfqbench.blocks import direct_finetune as dft
from dfqbench.blocks import direct_synthesis as ds

HOST_SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
                "equal", "repeat_interleave", "bincount"}


class HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in HOST_SYNCING:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 5))


def _forward(net: torch.nn.Module):
    def run(x):
        a = net[:3](x)
        logits = net[3:](a)
        return logits, [a], a
    return run


def test_synthesis_terms_read_nothing_back_and_keep_shapes():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 12, 12, generator=gen, requires_grad=True)
    labels = torch.randint(0, 5, (8,), generator=gen)
    store = ds.ClassCentroids(5, 6, chunk=None)
    net = _conv_net()
    with HostReads() as reads:
        boxes, flips = ds.draw_resized_crop_boxes(8, 12, 12, (0.5, 1.0), generator=gen)
        x_in = ds.local_object_reinforcement(x, boxes, flips, torch.tensor(True))
        logits = net(x_in)
        feats = net[:5](x_in).flatten(1)
        targets = ds.draw_soft_targets(labels, 0.9, gen)
        centroids, mask = store.lookup(labels)
        total, terms = ds.intraq_synthesis_objective(logits, feats, labels, targets, centroids, mask,
                                                     logits.new_zeros(()), ds.IntraQSynthesis())
        focal, _ = ds.hast_synthesis_objective(logits, labels, logits.new_zeros(()), ds.HastSynthesis())
        (total + focal).backward()
        store.update(feats, labels)
    assert reads.seen == []
    assert x_in.shape == x.shape and x.grad.shape == x.shape and set(terms) >= {"soft_inception", "margin_lower"}
    assert ((boxes[:, 2] <= 12) & (boxes[:, 0] + boxes[:, 2] <= 12) & (boxes[:, 3] >= 1)).all()
    assert ((targets >= 0.9) & (targets <= 1.0)).all()
    assert float(store.counts.sum()) == 8


def test_resized_crop_equals_interpolate_of_the_crop():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 10, 12, generator=gen, dtype=torch.float64)
    boxes = torch.tensor([[1, 2, 6, 7], [0, 0, 10, 12], [3, 1, 5, 9]])
    flips = torch.tensor([False, True, False])
    out = ds.resized_crop(x, boxes, flips)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        ref = F.interpolate(x[i:i + 1, :, t:t + h, l:l + w], size=(10, 12), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[i:i + 1], ref.flip(3) if flips[i] else ref, rtol=1e-12, atol=1e-12)


def test_finetune_losses_read_nothing_back_and_switches_matter():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 5, (6,), generator=gen)
    teacher, student = _conv_net(), _conv_net()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    teacher.requires_grad_(False)
    t_fwd, s_fwd = _forward(teacher), _forward(student)
    with HostReads() as reads:
        xf = dft.low_pass_filter(x, d0=2.0)
        loss, terms = dft.synq_student_loss(xf, labels, t_fwd, s_fwd, dft.SynqStudentLoss())
        loss.backward()
        hast, _ = dft.hast_student_loss(x, labels, lambda v: t_fwd(v)[:2], lambda v: s_fwd(v)[:2],
                                        dft.HastStudentLoss())
        hast.backward()
    assert reads.seen == []
    assert xf.shape == x.shape and xf.dtype == x.dtype and torch.isfinite(loss)
    assert {"kd", "ce", "fa", "kd_perturbed", "ce_perturbed", "cam"} <= set(terms)
    paper, paper_terms = dft.synq_student_loss(xf, labels, t_fwd, s_fwd, dft.SynqStudentLoss(paper_objective=True))
    assert "fa" not in paper_terms and not torch.allclose(paper, loss)


def test_low_pass_filter_is_identity_for_huge_d0_and_scales_with_reference_size():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(dft.low_pass_filter(x, d0=1e9), x, rtol=1e-12, atol=1e-12)
    a = dft.low_pass_filter(x, d0=80.0, reference_size=224)
    b = dft.low_pass_filter(x, d0=80.0 * 16 / 224)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_selective_ce_gives_hard_samples_log_c():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 2])
    mask = dft.confident_mask(torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0]]), labels, 0.5)
    assert mask.tolist() == [True, False]
    expected = (F.cross_entropy(logits[:1], labels[:1]) + torch.log(torch.tensor(3.0))) / 2
    torch.testing.assert_close(dft.selective_cross_entropy(logits, labels, mask), expected)


def test_grad_cam_is_in_unit_range_on_the_last_conv():
    net = _conv_net()
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    logits, _, act = _forward(net)(x)
    cam = dft.grad_cam(act, logits, (8, 8))
    cam = cam.detach()
    assert cam.shape == (4, 1, 8, 8) and float(cam.min()) >= 0 and float(cam.max()) <= 1
    assert dft.last_conv_name(net) == "2"
