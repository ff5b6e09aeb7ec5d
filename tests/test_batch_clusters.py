"""Batches from one cluster of similar images (DATALOADER.BATCH_CLUSTERS): the cosine k-means and its merging of
small clusters, the cluster file's reading and its errors, and batches that each hold one cluster and resume."""
import itertools
import json

import pytest
import torch

from fiber_d2.config import add_fiber_config
from fiber_d2.data.batch_clusters import load_batch_cluster_ids, spherical_kmeans, write_batch_clusters
from fiber_d2.data.resumable_loader import ResumableTrainLoader


def _blobs(sizes, dim=8, spread=0.05, seed=0):
    """Points around the first len(sizes) axes of R^dim; returns (points [N, dim], true blob of each point)."""
    g = torch.Generator().manual_seed(seed)
    points, labels = [], []
    for blob, size in enumerate(sizes):
        centre = torch.zeros(dim)
        centre[blob] = 1.0
        points.append(centre + spread * torch.randn(size, dim, generator=g))
        labels += [blob] * size
    return torch.cat(points), torch.tensor(labels)


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all(len(set(a[b == label].tolist())) == 1 for label in b.unique()) and len(a.unique()) == len(b.unique())


def test_kmeans_recovers_separated_blobs():
    points, truth = _blobs([12, 9, 15])
    clusters = spherical_kmeans(points, 3, min_size=1)
    assert _same_partition(clusters, truth)
    assert sorted(clusters.unique().tolist()) == [0, 1, 2]
    assert torch.equal(clusters, spherical_kmeans(points, 3, min_size=1))  # seeded


def test_small_clusters_join_their_nearest_neighbour():
    # Blob 2 (3 points) sits close to blob 1: with min_size 4 it must be dissolved into blob 1, not blob 0.
    points, truth = _blobs([10, 10, 3], dim=8)
    points[truth == 2] = points[truth == 2] * 0.3 + torch.tensor([0.0, 1.0] + [0.0] * 6) * 0.7
    points[truth == 2, 2] += 0.4
    clusters = spherical_kmeans(points, 3, min_size=4)
    sizes = torch.bincount(clusters)
    assert len(sizes) == 2 and int(sizes.min()) >= 4
    assert len(set(clusters[truth >= 1].tolist())) == 1 and clusters[0] != clusters[10]


def test_kmeans_rejects_impossible_sizes():
    points, _ = _blobs([5])
    with pytest.raises(ValueError, match="num_clusters"):
        spherical_kmeans(points, 6, min_size=1)
    with pytest.raises(ValueError, match="min_size"):
        spherical_kmeans(points, 2, min_size=6)


def _records(n):
    return [{"image_id": 100 + i, "file_name": f"img{i}.png"} for i in range(n)]


def test_cluster_file_gives_consecutive_group_ids(tmp_path):
    path = tmp_path / "clusters.json"
    write_batch_clusters(str(path), [100, 101, 102, 103, 104, 105], [7, 3, 7, 3, 7, 3])
    assert json.loads(path.read_text()) == {"100": 7, "101": 3, "102": 7, "103": 3, "104": 7, "105": 3}
    assert load_batch_cluster_ids(str(path), _records(6), batch_size=3) == [1, 0, 1, 0, 1, 0]


def test_cluster_file_errors_name_the_file_and_the_record(tmp_path):
    path = tmp_path / "clusters.json"
    write_batch_clusters(str(path), [100, 101, 102], [0, 0, 1])
    with pytest.raises(ValueError, match=r"no cluster for image_id 103 \(img3.png\)"):
        load_batch_cluster_ids(str(path), _records(4), batch_size=1)
    with pytest.raises(ValueError, match="cluster 1 holds 1 training records, fewer than the 2 .* an image twice"):
        load_batch_cluster_ids(str(path), _records(3), batch_size=2)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*cannot read it as JSON"):
        load_batch_cluster_ids(str(tmp_path / "bad.json"), _records(3), batch_size=1)
    with pytest.raises(ValueError, match="cannot read"):
        load_batch_cluster_ids(str(tmp_path / "missing.json"), _records(3), batch_size=1)


def test_every_batch_holds_one_cluster_and_resumes():
    groups = [i % 3 for i in range(30)]
    loader = ResumableTrainLoader(list(range(30)), lambda r: r, total_batch_size=4, aspect_ratio_grouping=False,
                                  num_workers=0, seed=5, group_ids=groups)
    batches = list(itertools.islice(iter(loader), 12))
    assert all(len({groups[i] for i in batch}) == 1 and len(batch) == 4 for batch in batches)
    assert len({groups[batch[0]] for batch in batches}) == 3
    resumed = ResumableTrainLoader(list(range(30)), lambda r: r, total_batch_size=4, aspect_ratio_grouping=False,
                                   num_workers=0, seed=5, group_ids=groups)
    loader = ResumableTrainLoader(list(range(30)), lambda r: r, total_batch_size=4, aspect_ratio_grouping=False,
                                  num_workers=0, seed=5, group_ids=groups)
    stream = iter(loader)
    for _ in range(5):
        next(stream)
    resumed.load_state_dict(loader.state_dict())
    assert list(itertools.islice(iter(resumed), 7)) == batches[5:12]


def test_groups_and_aspect_grouping_exclude_each_other():
    with pytest.raises(ValueError, match="at most one of group_ids, aspect_ratio_grouping and size_groups"):
        ResumableTrainLoader([{"width": 2, "height": 1}], lambda r: r, 1, True, 0, seed=0, group_ids=[0])


def test_config_default_is_random_batches():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_fiber_config(cfg)
    assert cfg.DATALOADER.BATCH_CLUSTERS == ""
