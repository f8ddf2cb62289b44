import json

import numpy as np
import pytest
import torch

from normlab.data import CorruptDatasetError, DetectionLoader, index_coco, write_coco_sample
from normlab.data.decode import decode_image
from normlab.data.detection_loader import aspect_grouped_batches
from normlab.data.detection_transforms import hflip_sample


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_coco_sample(tmp_path_factory.mktemp("coco") / "sample", train_images=22,
                             val_images=7)


@pytest.fixture(scope="module")
def source(root):
    return index_coco(root, "train", train=True)


def _loader(source, **options):
    options = {"batch_size": 4, "train": True, "seed": 3, "device": "cpu", "masks": True,
               "workers": 0, **options}
    return DetectionLoader(source, **options)


def _ids(batches):
    return [[t["image_id"] for t in targets] for _, targets in batches]


def _same(a, b):
    """Two lists of batches are equal: images, every target entry."""
    assert len(a) == len(b)
    for (images, targets), (images_b, targets_b) in zip(a, b):
        assert len(images) == len(images_b)
        for x, y in zip(images, images_b):
            assert torch.equal(x, y)
        for t, u in zip(targets, targets_b):
            assert t.keys() == u.keys()
            for key in t:
                same = torch.equal(t[key], u[key]) if torch.is_tensor(t[key]) else t[key] == u[key]
                assert same, key
    return True


def _index_of(source):
    return {source.image_id(i): i for i in range(len(source))}


def test_batches_hold_the_decoded_images_and_their_targets(source):
    loader = _loader(source, flip_prob=0.0)
    index = _index_of(source)
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 4
    for image, target in zip(images, targets):
        i = index[target["image_id"]]
        decoded = decode_image(source.read(i), name="x")
        assert image.dtype == torch.float32 and image.shape == (3, *source.size(i))
        assert torch.equal(image, decoded.float() / 255)
        expected = source.target(i, masks=True)
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(target[key], torch.from_numpy(expected[key]))
        assert isinstance(target["seed"], int) and 0 <= target["seed"] < 2**62
    assert "masks" not in next(iter(_loader(source, masks=False)))[1][0]


def test_a_flip_mirrors_the_image_boxes_and_masks(source):
    flipped = next(iter(_loader(source, flip_prob=1.0)))
    plain = next(iter(_loader(source, flip_prob=0.0)))
    for (x, t), (y, u) in zip(zip(*flipped), zip(*plain)):
        assert t["image_id"] == u["image_id"] and t["seed"] == u["seed"]
        assert torch.equal(x, y.flip(-1)) and torch.equal(t["masks"], u["masks"].flip(-1))
        for mask, box in zip(t["masks"], t["boxes"]):
            rows, columns = torch.nonzero(mask, as_tuple=True)
            tight = torch.stack([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1])
            assert torch.equal(box, tight.float())  # still the flipped mask's tight box


def test_hflip_sample_is_its_own_inverse():
    image = torch.arange(24).view(1, 4, 6)
    target = {"boxes": torch.tensor([[0.0, 1, 2.5, 3]]), "labels": torch.tensor([1])}
    image_f, target_f = hflip_sample(image, target)
    assert torch.equal(target_f["boxes"], torch.tensor([[3.5, 1, 6, 3]]))
    back, target_b = hflip_sample(image_f, target_f)
    assert torch.equal(back, image) and torch.equal(target_b["boxes"], target["boxes"])
    assert target_b["labels"] is target["labels"]


def test_training_batches_are_grouped_by_aspect_ratio(source):
    loader = _loader(source)
    portrait = {source.image_id(i): source.size(i)[0] > source.size(i)[1]
                for i in range(len(source))}
    counts = np.bincount(list(portrait.values()))
    assert len(loader) == sum(counts // 4) == len(list(loader))
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        ids = _ids(loader)
        assert all(len({portrait[i] for i in batch}) == 1 for batch in ids)
        flat = sum(ids, [])
        assert len(set(flat)) == len(flat) == 4 * len(loader)
        epochs.append(ids)
    assert epochs[0] != epochs[1]
    assert len(_loader(source, drop_last=False)) == sum(-(-counts // 4))
    ungrouped = _loader(source, group_aspect=False)
    assert len(ungrouped) == len(source) // 4
    mixed = [len({portrait[i] for i in batch}) for batch in _ids(ungrouped)]
    assert max(mixed) == 2


def test_aspect_grouped_batches_fill_each_group_in_order():
    order = torch.tensor([5, 0, 3, 1, 4, 2, 6])
    groups = np.array([1, 0, 0, 1, 0, 0, 1])  # sample -> group
    batches = aspect_grouped_batches(order, groups, 2, drop_last=True)
    assert [b.tolist() for b in batches] == [[0, 3], [5, 1], [4, 2]]  # in order of completion
    batches = aspect_grouped_batches(order, groups, 2, drop_last=False)
    assert [b.tolist() for b in batches] == [[0, 3], [5, 1], [4, 2], [6]]


def test_evaluation_is_in_order_ungrouped_and_complete(root):
    val = index_coco(root, "val", masks=False)
    loader = _loader(val, train=False, flip_prob=1.0, masks=False)
    ids = _ids(loader)
    assert len(loader) == 2 and [len(b) for b in ids] == [4, 3]
    assert sum(ids, []) == [val.image_id(i) for i in range(len(val))]
    images, targets = next(iter(loader))
    assert torch.equal(images[0], decode_image(val.read(0), name="x").float() / 255)  # no flip


def test_batches_do_not_depend_on_workers_batch_position_or_epoch_start(source):
    whole = list(_loader(source))
    in_workers = _loader(source, workers=2)
    assert _same(list(in_workers), whole)
    in_workers.close()
    # a sample's flip and seed are its own: another batch size gives the same per image
    per_image = {t["image_id"]: (t["seed"], x) for xs, ts in whole for x, t in zip(xs, ts)}
    for images, targets in _loader(source, batch_size=3):
        for x, t in zip(images, targets):
            if t["image_id"] in per_image:
                seed, image = per_image[t["image_id"]]
                assert t["seed"] == seed and torch.equal(x, image)
    loader = _loader(source)
    loader.set_epoch(1)
    seeds = {t["image_id"]: t["seed"] for _, ts in loader for t in ts}
    assert all(seeds[i] != per_image[i][0] for i in seeds.keys() & per_image.keys())


def test_shards_split_every_batch_and_resume_mid_epoch(source):
    whole = list(_loader(source))
    shards = [_loader(source).shard(rank, 2) for rank in range(2)]
    parts = [list(shard) for shard in shards]
    assert len(shards[0]) == len(whole)
    for b, (images, targets) in enumerate(whole):
        assert [len(p[b][0]) for p in parts] == [2, 2]
        joined = (parts[0][b][0] + parts[1][b][0], parts[0][b][1] + parts[1][b][1])
        assert _same([joined], [(images, targets)])
    loader = _loader(source)
    iterator = iter(loader)
    next(iterator)
    next(iterator)
    state = loader.state_dict()
    assert state == {"epoch": 0, "batch": 2, "seed": 3}
    resumed = _loader(source)
    resumed.load_state_dict(state)
    assert _same(list(resumed), whole[2:])
    assert resumed.state_dict() == {"epoch": 1, "batch": 0, "seed": 3}
    shard = _loader(source).shard(1, 2)
    shard.load_state_dict(state)
    assert _same(list(shard), parts[1][2:])
    with pytest.raises(ValueError, match="already shard 1 of 2"):
        shard.shard(0, 2)


def test_bad_files_stop_with_their_name_or_are_skipped_and_counted(root, tmp_path):
    folder = tmp_path / "copy"
    (folder / "annotations").mkdir(parents=True)
    (folder / "val").mkdir()
    for file in (root / "val").iterdir():
        (folder / "val" / file.name).write_bytes(file.read_bytes())
    annotations = (root / "annotations" / "instances_val.json").read_text()
    (folder / "annotations" / "instances_val.json").write_text(annotations)
    images = json.loads(annotations)["images"]
    assert (images[0]["height"], images[0]["width"]) != (images[3]["height"], images[3]["width"])
    # image 3's file holds image 0 (another size than the annotation file says); 5 is corrupt
    first = (root / "val" / images[0]["file_name"]).read_bytes()
    (folder / "val" / images[3]["file_name"]).write_bytes(first)
    (folder / "val" / images[5]["file_name"]).write_bytes(b"not a jpeg")
    val = index_coco(folder, "val")
    with pytest.raises(CorruptDatasetError, match=r"000000010004.jpg \(image id 10004\): the "
                       r"image is \d+x\d+ \(height x width\) but instances_val.json says") as error:
        list(_loader(val, train=False))
    assert "\n" not in str(error.value) and "on_bad_file='skip'" in str(error.value)
    loader = _loader(val, train=False, on_bad_file="skip")
    ids = _ids(loader)
    assert [len(b) for b in ids] == [3, 2] and loader.epoch_stats() == {"bad_files": 2}
    assert 10004 not in sum(ids, []) and 10006 not in sum(ids, [])


def test_bad_arguments_are_refused(source):
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        _loader(source, batch_size=64)
    with pytest.raises(ValueError, match="flip_prob"):
        _loader(source, flip_prob=2.0)
    with pytest.raises(ValueError, match="on_bad_file"):
        _loader(source, on_bad_file="ignore")
