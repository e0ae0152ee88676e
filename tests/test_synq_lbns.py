"""SynQ's ``--lbns`` switch (calibration centers + L-BNS, methods/synq.py, dfqbench/blocks/calibration_centers.py):
the bank key changes only when it is on, the bank is synthesised with it, deterministically and resumably, and the
block's bookkeeping (center labels, pooled statistics) is the official one. The numbers themselves are checked
against the official code in tests/test_golden_synq.py (fixture tests/golden/synq/lbns.pt).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfqbench.blocks import calibration_centers as cc
from dfqbench.blocks import synthesis
from dfqbench.errors import DfqbenchError
from dfqbench.runner import predict_spec, prepare, run
from dfqbench.store import ResultsStore

from conftest import RecordingProgress
from test_direct_methods import _count_batches, _request, bank_batches

LBNS = ("method.lbns=true", "method.center_steps=3")  # 3 Adam steps per center batch: seconds on the tiny network


def _key(tiny_request, tmp_path, *extra: str):
    from dfqbench.methods.synq import SynQ

    return SynQ.needs_bank(predict_spec(_request(tiny_request, "synq", tmp_path, *extra)))


def test_bank_key_changes_only_with_lbns(tiny_request, tmp_path):
    """Off (the default, the released scripts): the key hashes HAST's loss settings exactly as before the switch
    existed, so existing banks and run ids stay valid; on: a new key, which each L-BNS setting changes."""
    from dfqbench.methods.synq import SynqConfig
    from dfqbench.zoo import model_info

    spec = predict_spec(_request(tiny_request, "synq", tmp_path))
    cfg = SynqConfig(**spec.method_config)
    info = model_info(spec.model)
    before = synthesis.bank_key(spec, cfg.synthesis_settings(), info.input_size, info.num_classes,
                                {"objective": "hast", "beta": cfg.beta, "gamma": cfg.gamma})
    base = _key(tiny_request, tmp_path)
    assert base == before and _key(tiny_request, tmp_path, "method.lbns=false") == base
    on = _key(tiny_request, tmp_path, "method.lbns=true")
    assert on != base and on.synthesis["loss"]["lbns"] is True
    for change in ("method.lbns_weight=0.05", "method.lbns_bns_weight=1.0", "method.center_steps=10",
                   "method.center_ce_weight=1.0", "method.lbns_variance=pooled"):
        assert _key(tiny_request, tmp_path, "method.lbns=true", change) != on, change


@pytest.mark.parametrize("bad", ["method.lbns_variance=exact", "method.center_steps=-1", "method.lbns_weight=-1"])
def test_bad_lbns_settings_are_one_line(bad, tiny_request, tmp_path):
    with pytest.raises(DfqbenchError) as err:
        prepare(_request(tiny_request, "synq", tmp_path, bad))
    assert "\n" not in str(err.value) and bad.split("=")[0] in str(err.value)


def test_lbns_run_synthesises_centers_then_a_resumable_bank(tiny_request, tmp_path, monkeypatch):
    """A tiny run with ``method.lbns=true`` builds the bank under the new key with the centers made once before its
    first batch; a synthesis killed in its second batch makes the centers again and resumes to the same pixels."""
    made_centers: list[int] = []
    real = cc.synthesise_centers

    def counted(*args, **kwargs):
        made_centers.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("dfqbench.methods.synq.synthesise_centers", counted)
    straight = _request(tiny_request, "synq", tmp_path / "straight", *LBNS)
    record = run(straight, RecordingProgress())
    assert record.top1_per_epoch and made_centers == [1]
    (bank,) = ResultsStore(tmp_path / "straight").banks()
    assert bank.name == _key(tiny_request, tmp_path, *LBNS).name != _key(tiny_request, tmp_path).name

    killed = _request(tiny_request, "synq", tmp_path / "killed", *LBNS)
    made = _count_batches(monkeypatch, fail_at=1)
    with pytest.raises(RuntimeError, match="simulated kill during synthesis"):
        run(killed, RecordingProgress())
    made = _count_batches(monkeypatch)
    run(killed, RecordingProgress())
    assert len(made) == 1 and made_centers == [1, 1, 1]  # the rerun synthesises batch 1 only, after new centers
    pixels = [torch.cat([b.images for b in bank_batches(next(ResultsStore(tmp_path / n).banks()))])
              for n in ("straight", "killed")]
    assert torch.equal(pixels[0], pixels[1])


def test_center_labels_are_the_official_batches():
    """i·B + j, the last batch padded with class 0 (SQ:distill_data.py:L119-128); ⌈C/B⌉ batches (L343)."""
    assert [t.tolist() for t in cc.center_labels(10, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
    assert [t.tolist() for t in cc.center_labels(10, 5)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [t.tolist() for t in cc.center_labels(3, 6)] == [[0, 1, 2, 0, 0, 0]]
    assert [cc.deep_layer_start(n) for n in (1, 2, 4, 19, 20)] == [0, 0, 1, 8, 9]


def test_pooled_statistics_total_variance_and_the_official_first_batch_weight():
    """The pooled mean is the mean of all center images; ``pooled`` is their exact (biased) variance, ``official``
    counts the first batch's within-variance once instead of n times (SQ:distill_data.py:L357 against L362)."""
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)).double().eval()
    gen = torch.Generator().manual_seed(0)
    centers = [torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64) * (j + 1) + j for j in range(3)]
    with torch.no_grad():
        inputs = torch.cat([net[0](c) for c in centers])
        firsts = net[0](centers[0])
    mean = inputs.mean((0, 2, 3))
    var = inputs.var((0, 2, 3), correction=0)
    (m_pooled,), (v_pooled,) = cc.pooled_statistics(net, centers, "pooled")
    (m_official,), (v_official,) = cc.pooled_statistics(net, centers, "official")
    torch.testing.assert_close(m_pooled, mean)
    torch.testing.assert_close(m_official, mean)
    torch.testing.assert_close(v_pooled, var)
    first_var = firsts.var((0, 2, 3), correction=0)
    torch.testing.assert_close(v_official, var - first_var * (4 - 1) / 12)


def test_the_bank_estimate_counts_the_centers_with_lbns(tiny_request, tmp_path):
    """The planner's bank cost includes ⌈C/B⌉ × center_steps prelude steps when ``lbns`` is on (made again on a
    resume), none when off; a summary cached before the field existed counts none."""
    from dfqbench.launch.banks import bank_summary, synthesis_seconds
    from dfqbench.methods.synq import SynQ

    off = bank_summary(SynQ, predict_spec(_request(tiny_request, "synq", tmp_path)))
    on = bank_summary(SynQ, predict_spec(_request(tiny_request, "synq", tmp_path, *LBNS)))
    assert off["prelude_steps"] == 0
    assert on["prelude_steps"] == -(-10 // on["batch_size"]) * 3  # tiny: 10 classes, center_steps=3
    per_step = synthesis_seconds(on) / (on["num_batches"] * on["steps"] + on["prelude_steps"])
    assert synthesis_seconds(on, 1) == pytest.approx((on["steps"] + on["prelude_steps"]) * per_step)
    assert synthesis_seconds(on, 0) == 0.0
    legacy = {k: v for k, v in off.items() if k != "prelude_steps"}
    assert synthesis_seconds(legacy) == synthesis_seconds(off)
