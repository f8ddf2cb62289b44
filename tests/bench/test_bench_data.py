"""``normlab bench data`` on a few tiny images: both pipelines measured, the report's fields."""

import json
import os
import time

import pytest
from PIL import Image

from normlab.bench import data as bench_data_module
from normlab.bench.cli import main
from normlab.bench.data import (
    STREAMING,
    TORCHVISION,
    _PeakMemory,
    _process_tree,
    bench_data,
    write_bench_folder,
)
from normlab.bench.report import data_table


@pytest.mark.slow
def test_bench_data_reports_both_pipelines_side_by_side(tmp_path):
    folder = tmp_path / "images"
    result = bench_data(
        folder, images=40, workers=1, batch_size=8, size=24, rounds=1, index_files=300,
        image_size=(64, 48),
    )
    assert result.images == 40 and result.folder == str(folder)
    assert len(list((folder / "train").glob("c*/*.JPEG"))) == 40
    assert [p.pipeline for p in result.pipelines] == [STREAMING, TORCHVISION]
    for p in result.pipelines:
        assert p.images == 40  # one epoch after the first batch
        assert p.images_per_s > 0 and p.ratio > 0 and p.data_wait_s > 0
        assert p.peak_rss_mib > 100 and p.peak_pss_mib is not None
        assert 0 < p.peak_pss_mib <= p.peak_rss_mib
    assert result.pipelines[1].ratio == 1.0
    assert result.index is not None and result.index.files == 300
    assert result.index.index_mib > 0
    table = data_table(result)
    assert "| streaming |" in table and "| torchvision | " in table and "300 empty" in table
    assert "streaming / torchvision, per round: " in table
    assert len(result.pipelines[0].round_ratios) == 1
    fields = result.as_dict()
    assert set(fields["pipelines"][0]) >= {
        "images_per_s", "ratio", "peak_rss_mib", "peak_pss_mib", "data_wait_s",
    }


@pytest.mark.slow
def test_bench_data_command_reuses_a_folder_and_writes_json(tmp_path, capsys):
    folder = write_bench_folder(tmp_path / "images", 24, classes=3, size=(40, 30))
    out = tmp_path / "data.json"
    status = main([
        "data", "--folder", str(folder), "--workers", "0", "--batch-size", "8", "--size",
        "16", "--rounds", "1", "--index-files", "0", "--json", str(out),
    ])
    assert status == 0
    assert "| streaming |" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["images"] == 24 and row["index"] is None and row["workers"] == 0


def test_generated_images_are_jpegs_of_about_the_size(tmp_path):
    folder = write_bench_folder(tmp_path / "images", 8, classes=2, size=(100, 75), seed=1)
    files = sorted((folder / "train").glob("*/*.JPEG"))
    assert len(files) == 8 and {f.parent.name for f in files} == {"c0", "c1"}
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert sorted(image.size) in ([h, w] for h in range(67, 83) for w in range(90, 111))
    with pytest.raises(FileExistsError, match="exists"):
        write_bench_folder(folder, 2)


def test_peak_memory_counts_the_children_of_a_process():
    pid = os.fork()
    if pid == 0:
        os.execvp("sleep", ["sleep", "5"])
    try:
        assert _process_tree(os.getpid())[0] == os.getpid()
        assert pid in _process_tree(os.getpid())
        peak = _PeakMemory(os.getpid())
        peak.active.set()
        time.sleep(0.1)
        peak.active.clear()
        peak.sample(pss=True)
        peak.close()
        alone = bench_data_module._rss_kib(os.getpid())
        assert alone is not None and peak.rss > alone
        assert peak.pss is not None and 0 < peak.pss <= peak.rss
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
