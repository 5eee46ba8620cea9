"""benchmarks/peer_compare.py: lmscale's side is counted with the peer's statistic (the mean)."""

import pytest

from benchmarks.peer_compare import mean_chars_per_s


def test_mean_not_median_of_the_step_times():
    # One slow step in three: the median (0.1 s) would claim 40960 chars/s, the mean 20480.
    record = {"tokens_per_step": 4096, "step_s_all": [0.1, 0.1, 0.4], "chars_per_s": 40960.0}
    assert mean_chars_per_s(record) == pytest.approx(20480.0, rel=1e-12)


def test_missing_peer_or_interpreter_stops_before_lmscale_runs(monkeypatch, tmp_path, capsys):
    # Was a FileNotFoundError traceback after lmscale's first bench had run (~1 minute).
    import benchmarks.peer_compare as pc
    calls = []
    monkeypatch.setattr(pc.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    out = str(tmp_path / "out.jsonl")
    monkeypatch.setattr("sys.argv", ["peer_compare.py", "--peer", str(tmp_path / "none.py"),
                                     "--out", out])
    with pytest.raises(SystemExit) as e:
        pc.main()
    assert e.value.code == 2 and "no peer at" in capsys.readouterr().err and not calls
    peer = tmp_path / "torch_mlstm.py"
    peer.write_text("")
    monkeypatch.setattr("sys.argv", ["peer_compare.py", "--peer", str(peer), "--out", out,
                                     "--torch_python", str(tmp_path / "no-python")])
    with pytest.raises(SystemExit) as e:
        pc.main()
    assert e.value.code == 2 and "no PyTorch interpreter" in capsys.readouterr().err and not calls
