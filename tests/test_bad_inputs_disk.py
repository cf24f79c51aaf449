"""Issue 24, a full disk (a small tmpfs; skipped where mounting is not permitted): synth, eval's outputs, the
dataset cache and corpus build each end with "no space left on DEVICE writing PATH" (exit 2), leave no temporary
behind, and a rerun after space is freed works."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main


@pytest.fixture
def small_fs(tmp_path: Path):
    """mount(size): a tmpfs of that size at tmp_path/fs (remounting resizes it); unmounted afterwards."""
    where = tmp_path / "fs"
    where.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        options = f"size={size}" + (",remount" if mounted else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(fs: Path, leave: int) -> None:
    stats = os.statvfs(fs)
    free = stats.f_bavail * stats.f_frsize
    (fs / "filler").write_bytes(b"\0" * max(0, free - leave))


def _no_space(err: str, fs: Path, path: Path) -> None:
    assert f"no space left on {fs} writing {path}" in err, err
    assert "Traceback" not in err


def test_synth_on_a_full_disk_names_device_and_file_and_leaves_no_temporary(tiny_checkpoint: Path, small_fs, capsys):
    fs = small_fs("256k")
    _fill(fs, 8 * 1024)
    out = fs / "x.wav"
    assert main(["synth", str(tiny_checkpoint), "the birch canoe slid on the smooth planks", "-o", str(out),
                 "--device", "cpu"]) == 2
    _no_space(capsys.readouterr().err, fs, out)
    assert sorted(p.name for p in fs.iterdir()) == ["filler"]
    (fs / "filler").unlink()
    assert main(["synth", str(tiny_checkpoint), "the birch canoe", "-o", str(out), "--device", "cpu"]) == 0


def test_eval_outputs_on_a_full_disk_name_device_and_file(tiny_checkpoint: Path, small_fs, capsys):
    fs = small_fs("512k")
    _fill(fs, 16 * 1024)
    out = fs / "eval"
    assert main(["eval", str(tiny_checkpoint), "--no-track", "--device", "cpu", "--limit", "1", "--schedules",
                 "manual-6", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"no space left on {fs} writing {out}" in err and "Traceback" not in err, err
    assert not list(out.rglob("*.tmp*")) and not list(out.rglob(".*.png"))


def test_the_dataset_cache_on_a_full_disk_leaves_no_orphan_and_a_rerun_works(corpus_dir: Path, small_fs,
                                                                            tmp_path: Path):
    from experiments.config.run import DataConfig, InputError
    from experiments.corpus.dataset import load_dataset

    fs = small_fs("1m")
    cache = fs / "cache"
    orphan = cache / "corpus" / f"0123abcd.tmp-{_dead_pid()}"  # left by an earlier attempt that was killed
    orphan.mkdir(parents=True)
    (orphan / "audio.npy").write_bytes(b"\0" * 100_000)
    config = DataConfig(root=str(corpus_dir), cache_dir=str(cache), val_fraction=0.3, test_fraction=0.1)
    for _ in range(2):  # each attempt on the full disk: the same clear error, no new orphan
        with pytest.raises(InputError, match=rf"no space left on {fs} writing {cache}"):
            load_dataset(config, progress=False)
        assert list((cache / "corpus").iterdir()) == []
    small_fs("64m")  # space freed: the rerun builds the cache
    assert load_dataset(config, progress=False).train
    assert [p.name for p in (cache / "corpus").iterdir() if ".tmp-" in p.name] == []


def test_corpus_build_on_a_full_disk_names_device_and_keeps_the_finished_utterances(small_fs, capsys):
    fs = small_fs("1m")
    out = fs / "harvard"
    assert main(["corpus", "build", "--out", str(out), "--limit", "30", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"no space left on {fs} writing" in err and "Traceback" not in err, err
    partial = fs / "harvard.partial"
    kept = len(list((partial / "wavs").glob("*.wav")))
    assert kept > 0 and not list(partial.rglob("*.tmp"))
    small_fs("16m")
    assert main(["corpus", "build", "--out", str(out), "--limit", "30", "--workers", "1"]) == 0
    assert len(list((out / "wavs").glob("*.wav"))) == 30


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
