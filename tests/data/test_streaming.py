import io
import multiprocessing

import numpy as np
import pytest
import torch
from PIL import Image

from normlab.data import StreamingLoader, decode_image, index_image_folder
from normlab.data.presets import transform_preset

from .formats import write_jpeg_folder

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture
def source(tmp_path):
    write_jpeg_folder(tmp_path / "data", ["a", "b", "c"], per_class=4)
    return index_image_folder(tmp_path / "data", cache_dir=tmp_path / "cache")


class Counting:
    """A SampleSource that records which samples were read."""

    def __init__(self, source):
        self.source, self.name, self.classes = source, source.name, source.classes
        self.reads = []

    def __len__(self):
        return len(self.source)

    def label(self, i):
        return self.source.label(i)

    def describe(self, i):
        return self.source.describe(i)

    def read(self, i):
        self.reads.append(i)
        return self.source.read(i)


def _loader(source, batch_size=5, **options):
    options = {"train": True, "transform": transform_preset("imagenet_train", size=8),
               "mean": MEAN, "std": STD, "workers": 0, **options}
    return StreamingLoader(source, batch_size, **options)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b)
    )


def _jpeg(pixels, **options):
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", **options)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["JPEG", "PNG"])
@pytest.mark.parametrize("channels", [3, 1])
def test_decode_equals_plain_pillow(kind, channels):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, kind)
    image = decode_image(out.getvalue(), channels=channels, name="x")
    with Image.open(io.BytesIO(out.getvalue())) as plain:
        expected = np.array(plain.convert("RGB" if channels == 3 else "L")).reshape(20, 30, -1)
    assert image.dtype == torch.uint8 and image.shape == (channels, 20, 30)
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize(
    ("min_size", "shape"),
    [(None, (384, 512)), (200, (384, 512)), (192, (192, 256)), (96, (96, 128)), (40, (48, 64))],
)
def test_draft_decodes_jpeg_smaller_only_when_min_size_allows(min_size, shape):
    pixels = np.random.default_rng(0).integers(0, 256, (384, 512, 3), dtype=np.uint8)
    image = decode_image(_jpeg(pixels), min_size=min_size, name="x")
    assert image.shape == (3, *shape)
    with Image.open(io.BytesIO(_jpeg(pixels))) as plain:
        plain.draft("RGB", (shape[1], shape[0]))
        assert torch.equal(image, torch.from_numpy(np.array(plain.convert("RGB"))).permute(2, 0, 1))


def test_draft_leaves_other_formats_at_full_size():
    out = io.BytesIO()
    Image.new("RGB", (64, 48)).save(out, "PNG")
    assert decode_image(out.getvalue(), min_size=8, name="x").shape == (3, 48, 64)


def test_batches_are_the_normalized_decoded_images_in_order(source):
    loader = _loader(source, train=False, transform=None)
    batches = _epoch(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [5, 5, 2]
    images = torch.stack([decode_image(source.read(i), name="") for i in range(12)]).float()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = (images / 255 - mean) / std
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32 and torch.allclose(x, expected, rtol=1e-5, atol=1e-5)
    assert torch.cat([y for _, y in batches]).tolist() == source.labels.tolist()


def test_workers_do_not_change_the_batches(source):
    in_process, in_workers = _loader(source), _loader(source, workers=2, prefetch_factor=1)
    assert len(in_process) == 2  # drop_last in training: 12 // 5
    for _ in range(2):
        assert _same(_epoch(in_process), _epoch(in_workers))
    assert in_workers.state_dict() == {"epoch": 2, "batch": 0, "seed": 0}
    in_workers.close()


def test_process_shares_concatenate_to_the_global_batch(source):
    full = _loader(source, train=False)  # 3 batches: 5, 5, 2 samples
    for world_size in (2, 3):
        shards = [full.shard(rank, world_size) for rank in range(world_size)]
        assert all(len(shard) == len(full) for shard in shards)
        parts = list(zip(*[_epoch(shard) for shard in shards]))
        joined = [(torch.cat([x for x, _ in p]), torch.cat([y for _, y in p])) for p in parts]
        assert _same(joined, _epoch(full))
        full.set_epoch(0)
    assert [len(y) for _, y in _epoch(shards[2])] == [1, 1, 0]
    with pytest.raises(ValueError, match="already shard 1 of 2"):
        full.shard(1, 2).shard(0, 2)


def test_a_mid_epoch_start_is_the_epoch_tail_and_decodes_only_it(source):
    whole = _loader(source, batch_size=4)
    whole.set_epoch(1)
    epoch = _epoch(whole)
    counting = Counting(source)
    resumed = _loader(counting, batch_size=4)
    resumed.load_state_dict({"epoch": 1, "batch": 1, "seed": 0})
    assert _same(_epoch(resumed), epoch[1:]) and len(counting.reads) == 8
    assert resumed.state_dict() == {"epoch": 2, "batch": 0, "seed": 0}


def test_augmentation_is_per_sample_and_epoch_and_spares_the_global_generator(source):
    loader = _loader(source, shuffle=False)
    torch.manual_seed(3)
    first, second = _epoch(loader), _epoch(loader)
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(4))
    assert not torch.equal(first[0][0], second[0][0])
    reseeded = _loader(source, shuffle=False, seed=1)
    assert not torch.equal(_epoch(reseeded)[0][0], first[0][0])


def test_loader_settings(source):
    loader = _loader(source, workers=2, channels_last=True)
    assert loader.pin_memory is False and loader.epoch_stats() == {"bad_files": 0}
    x, _ = next(iter(loader))
    assert x.shape == (5, 3, 8, 8) and x.is_contiguous(memory_format=torch.channels_last)
    loader.close()
    with pytest.raises(ValueError, match="fewer than one batch of 13"):
        _loader(source, batch_size=13)
    with pytest.raises(ValueError, match="rank must lie in"):
        _loader(source, rank=2, world_size=2)


@pytest.mark.gpu
def test_cuda_batches_are_pinned_copies_of_the_cpu_batches(source):
    cuda = _loader(source, device="cuda", workers=2)
    assert cuda.pin_memory
    for (x, y), (u, v) in zip(_epoch(cuda), _epoch(_loader(source))):
        assert x.is_cuda and y.is_cuda
        torch.testing.assert_close(x.cpu(), u)
        assert torch.equal(y.cpu(), v)


def test_an_abandoned_pass_continues_at_the_next_batch_with_persistent_workers(source):
    epoch = _epoch(_loader(source, batch_size=3))
    loader = _loader(source, batch_size=3, workers=2)
    x, y = next(iter(loader))
    assert loader.state_dict() == {"epoch": 0, "batch": 1, "seed": 0}
    assert _same([(x, y), *_epoch(loader)], epoch)
    loader.close()


def test_close_stops_the_workers_at_once_and_a_later_pass_starts_new_ones(source):
    loader = _loader(source, batch_size=3, workers=2)
    before = set(multiprocessing.active_children())
    epoch = _epoch(loader)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2 and all(w.is_alive() for w in workers)  # persistent
    loader.close()
    assert not any(w.is_alive() for w in workers)
    loader.set_epoch(0)
    assert _same(_epoch(loader), epoch)
    loader.close()
