"""The batch loop: onnxruntime's next batch overlaps the host's work on the current one,
host-mode batches are split so that raw taps fit a budget, and the numbers do not change."""

import threading

import numpy as np
import onnxruntime as ort
import pytest

from nasprobe import cpus
from nasprobe.job import epoch, pipeline, runtime, tasks
from nasprobe.measures.aggregate import LayerStats
from nasprobe.measures.kernels import nas_map
from nasprobe.onnxgraph.nas_graph import build_tap_graph
from nasprobe.onnxgraph.taps import find_taps
from nasprobe.probesets import load_probe_set
from tests.core import onnx_models as om

SCALARS = ["nas_median", "nas_mean", "nas_min", "nas_max", "entropy_mean"]


def test_sub_batch_size_keeps_the_taps_of_the_batches_in_flight_within_the_budget():
    per_image = pipeline.tap_bytes_per_image([(64, 56, 56), (256, 56, 56)])
    assert per_image == (64 + 256) * 56 * 56 * 4
    n = pipeline.sub_batch_size(64, per_image, budget=64 * 2**20)
    assert n == 64 * 2**20 // (2 * per_image) == 8
    assert 2 * n * per_image <= 64 * 2**20 < 2 * (n + 1) * per_image
    assert pipeline.sub_batch_size(64, 100, budget=2**30) == 64  # fits: the batch as asked
    assert pipeline.sub_batch_size(64, 2**30, budget=2**20) == 1  # never below one image
    assert pipeline.sub_batch_size(5, 0) == 5


def test_prefetched_yields_in_order_and_runs_the_next_item_while_the_caller_works():
    started = {i: threading.Event() for i in range(4)}

    def run(i):
        started[i].set()
        return i * 10

    seen = []
    for item, result in pipeline.prefetched(range(4), run):
        seen.append((item, result))
        if item < 3:  # the next run starts before this item's work ends
            assert started[item + 1].wait(5), f"run({item + 1}) did not overlap item {item}"
    assert seen == [(0, 0), (1, 10), (2, 20), (3, 30)]
    assert list(pipeline.prefetched([], run)) == []


@pytest.mark.parametrize("cores, split", [(1, (1, 1)), (2, (2, 1)), (3, (3, 1)), (4, (4, 1)),
                                          (5, (4, 1)), (6, (3, 2)), (8, (4, 2)), (16, (4, 4))])
def test_cpu_streams_share_the_cores_out(cores, split):
    streams, threads = pipeline.cpu_streams(cores)
    assert (streams, threads) == split
    assert 1 <= streams <= pipeline.MAX_STREAMS and streams * threads <= cores


def test_prefetched_with_two_workers_runs_two_items_at_once_and_yields_in_order():
    both = threading.Barrier(2, timeout=10)  # breaks (BrokenBarrierError) unless two run at once
    alive, most = [0], [0]
    lock = threading.Lock()

    def run(i):
        with lock:
            alive[0] += 1
            most[0] = max(most[0], alive[0])
        if i < 2:
            both.wait()
        with lock:
            alive[0] -= 1
        return -i

    got = list(pipeline.prefetched(range(7), run, workers=2))
    assert got == [(i, -i) for i in range(7)]
    assert most[0] == 2  # never more than the workers


def test_prefetched_raises_a_failed_run_where_its_result_is_due():
    def run(i):
        if i == 2:
            raise ValueError("bad batch 2")
        return i

    got = []
    with pytest.raises(ValueError, match="bad batch 2"):
        for item, _ in pipeline.prefetched(range(5), run):
            got.append(item)
    assert got == [0, 1]


def test_worker_pools_are_kept_per_thread_and_role_and_fresh_in_a_forked_child():
    """An epoch reuses the last epoch's threads: the same pool for the same (thread, role,
    size), another for another role or thread; a forked child, which has none of the parent's
    threads, gets pools that run."""
    import multiprocessing as mp

    corr = pipeline.worker_pool(1, "corr")
    assert pipeline.worker_pool(1, "corr") is corr
    assert pipeline.worker_pool(1) is not corr
    names = {corr.submit(lambda: threading.current_thread().name).result() for _ in range(5)}
    assert len(names) == 1 and names.pop().startswith("nasprobe-corr")
    other = []
    t = threading.Thread(target=lambda: other.append(pipeline.worker_pool(1, "corr")))
    t.start()
    t.join()
    assert other[0] is not corr
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_run_on_a_kept_pool).get(timeout=60)
    assert got == 42


def _run_on_a_kept_pool() -> int:
    return pipeline.worker_pool(1, "corr").submit(lambda: 42).result(timeout=30)


@pytest.fixture
def tapped(tmp_path):
    """A conv/BN/Gemm model with raw-tap outputs and an 11-image labelled probe set."""
    model, _ = om.conv_bn_relu_net(np.random.default_rng(3))
    taps = find_taps(model)
    graph, fetch = build_tap_graph(model, taps)
    rng = np.random.default_rng(5)
    path = tmp_path / "probe.npz"
    np.savez(path, x=rng.normal(0, 1, (11, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 11))
    probeset = load_probe_set(path, om.input_shape(model) and (None, 3, 8, 8))
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess, taps, fetch, probeset


def _reference(sess, taps, fetch, probeset):
    """Today's numbers written out plainly: every image in one onnxruntime run, NAS maps by the
    host kernel (its agreement with float64 numpy is tested in test_kernels.py), one update."""
    x, y = probeset.first(probeset.size), np.asarray(probeset.labels, np.int64)
    outs = sess.run([sess.get_outputs()[0].name] + fetch, {"x": x})
    logits = outs[0].astype(np.float64)
    lp = logits - logits.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    summaries, spatial = {}, {}
    for t, a in zip(taps, outs[1:]):
        maps = nas_map(a, t.channel_axis)
        spatial[t.layer] = maps.shape[1:]
        stats = LayerStats(t.channels, maps.shape[1:], keep_images=4)
        stats.update(maps)
        summaries[t.layer] = stats.summary()
    loss = float(-lp[np.arange(len(y)), y].mean())
    return summaries, spatial, {"loss": loss, "accuracy": float((lp.argmax(1) == y).mean())}


@pytest.mark.parametrize("streams", [1, 2, 3])
@pytest.mark.parametrize("budget", [None, 1, "3 images"])
def test_split_and_overlapped_batches_give_todays_numbers(tapped, budget, streams):
    sess, taps, fetch, probeset = tapped
    ref, spatial, metrics = _reference(sess, taps, fetch, probeset)
    per_image = pipeline.tap_bytes_per_image((t.channels, *spatial[t.layer]) for t in taps)
    tap_budget = {None: pipeline.HOST_TAP_BUDGET, 1: 1, "3 images": 6 * per_image}[budget]
    sizes, lock = [], threading.Lock()

    class Recording:
        """The session, recording how many images each run gets."""

        def __getattr__(self, name):
            return getattr(sess, name)

        def run(self, names, feed):
            with lock:
                sizes.append(len(feed["x"]))
            return sess.run(names, feed)

    got = epoch.probe_epoch(Recording(), probeset, taps, spatial, batch_size=5, keep_images=4,
                            input_name="x", fetch=fetch, host=True, tap_budget=tap_budget,
                            streams=streams, threads=1)
    # the budget holds the taps of max(2, streams) runs at once
    expected = {None: [5, 5, 1], 1: [1] * 11,
                "3 images": [3, 3, 3, 2] if streams < 3 else [2] * 5 + [1]}[budget]
    assert sorted(sizes, reverse=True) == expected  # streams finish in any order
    assert got.images == 11
    assert got.fetched_bytes == 11 * (per_image + 4 * 4)  # taps and the 4 logits per image
    for layer, want in ref.items():
        have = got.summaries[layer]
        for var in SCALARS:
            assert have[var] == pytest.approx(want[var], abs=1e-6), (layer, var)
        np.testing.assert_allclose(have["nas_quantile"], want["nas_quantile"], atol=1e-6)
        np.testing.assert_allclose(have["nas_map"], want["nas_map"], atol=1e-6)
        np.testing.assert_allclose(have["nas_image_map"], want["nas_image_map"], atol=1e-6)
        assert have["nas_hist"].sum() == want["nas_hist"].sum()
    assert got.metrics["loss"] == pytest.approx(metrics["loss"], rel=1e-6)
    assert got.metrics["accuracy"] == metrics["accuracy"]


def test_io_binding_gives_what_run_gives(tapped):
    sess, taps, fetch, probeset = tapped
    x = probeset.first(7)
    plain = runtime.run_batch(sess, fetch, "x", x)
    bound = runtime.run_batch(sess, fetch, "x", x, bind=True)
    padded = runtime.run_batch(sess, fetch, "x", x[:3], fixed_batch=7, bind=True)
    for a, b, c in zip(plain, bound, padded):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(c, a[:3], atol=1e-6)
        assert c.shape[0] == 3


@pytest.fixture
def two_runs_probe(tmp_path):
    from tests.core.conftest import write_runs

    return write_runs(tmp_path, ["a"], 5, seed=11, probe_seed=12)


@pytest.mark.parametrize("short_epoch_runs", [pipeline.SHORT_EPOCH_RUNS, 1])
def test_a_cpu_probe_job_runs_as_streams_and_stores_what_one_stream_stores(
        tmp_path, two_runs_probe, monkeypatch, short_epoch_runs):
    """On CPU with host NAS, a job splits the cores into streams (2 cores: two streams of one
    onnxruntime thread each). Its epochs of 2 runs each (5 images, batch 3) are short: two
    epochs are probed at once, each in a thread of its own running its batches itself (0
    worker streams) with a session of one thread. Counted as long (``SHORT_EPOCH_RUNS`` 1),
    one epoch at a time, its batches in two streams sharing one session. Either way the store
    is the same bit for bit as with one core, and epochs are committed in order. The weight
    correlations run on the pool's ``corr`` thread beside one epoch at a time, and in each
    epoch's own thread when epochs run side by side."""
    import nasprobe
    from nasprobe import kernels
    from nasprobe.store.writer import RunWriter

    monkeypatch.setattr(pipeline, "SHORT_EPOCH_RUNS", short_epoch_runs)
    seen, threads, committed, corr_threads = [], set(), [], []
    original, write, corr = tasks.probe_epoch, RunWriter.write_epoch, tasks.weight_correlations

    def recording(session, *args, **kw):
        seen.append((kw["streams"], kw["threads"],
                     session.get_session_options().intra_op_num_threads))
        threads.add(threading.get_ident())
        return original(session, *args, **kw)

    def writing(self, epoch, *args, **kw):
        committed.append(epoch)
        return write(self, epoch, *args, **kw)

    def correlating(*args):
        me = threading.current_thread()
        corr_threads.append((me.ident in threads, me.name.startswith("nasprobe-corr")))
        return corr(*args)

    monkeypatch.setattr(tasks, "probe_epoch", recording)
    monkeypatch.setattr(RunWriter, "write_epoch", writing)
    monkeypatch.setattr(tasks, "weight_correlations", correlating)
    stores = {}
    try:
        for cores in (1, 2):
            runtime.set_intra_op_threads(cores)
            kernels.set_threads(cores)
            out = tmp_path / f"cores{cores}.zarr"
            threads.clear()
            nasprobe.probe([tmp_path / "a"], probe=two_runs_probe, out=out, batch_size=3,
                           keep_images=16, progress=False, nas_on="host")
            stores[cores] = nasprobe.open_store(out).to_dataset()
    finally:
        runtime.set_intra_op_threads(None)
        kernels.set_threads(None)
    side_by_side = short_epoch_runs >= 2
    assert seen == [(1, 1, 1)] * 3 + [(0 if side_by_side else 2, 1, 1)] * 3
    if side_by_side:  # each epoch in a thread of the job's pool, not in the caller's
        assert len(threads) == 2 and threading.get_ident() not in threads
    else:
        assert threads == {threading.get_ident()}
    assert corr_threads == [(False, True)] * 3 + [(side_by_side, not side_by_side)] * 3
    one, two = stores[1], stores[2]
    assert committed == [int(e) for e in one.epoch.values] * 2 and len(committed) == 6
    for var in one.data_vars:
        np.testing.assert_array_equal(one[var].values, two[var].values, err_msg=var)


MIB = 2**20


@pytest.mark.parametrize("epochs, runs, streams, weights, at_once", [
    (100, 4, 2, 1 * MIB, 2), (100, 8, 4, 0, 4), (3, 2, 4, 1 * MIB, 3),  # as many as streams
    (100, 9, 2, 1 * MIB, 1),  # longer epochs: one at a time, its batches in streams
    (1, 4, 2, 1 * MIB, 1),  # a single epoch
    (100, 4, 1, 1 * MIB, 1),  # one core
    (100, 4, 4, 200 * MIB, 3),  # the epochs beside the first hold at most 512 MiB of weights
    (100, 4, 4, 600 * MIB, 1),  # a large model: one epoch at a time
])
def test_short_epochs_are_probed_side_by_side(epochs, runs, streams, weights, at_once):
    assert pipeline.SIDE_BY_SIDE_WEIGHTS == 512 * MIB
    assert pipeline.epochs_at_once(epochs, runs, streams, weights) == at_once


def test_prefetched_without_workers_runs_each_item_in_the_callers_thread():
    me, order = threading.get_ident(), []

    def run(i):
        order.append(("run", i, threading.get_ident() == me))
        if i == 2:
            raise ValueError("two")
        return i * 10

    gen = pipeline.prefetched(range(4), run, workers=0)
    for item, got in gen:
        order.append(("got", item, got))
        if item == 1:
            with pytest.raises(ValueError, match="two"):
                next(gen)
            break
    assert order == [("run", 0, True), ("got", 0, 0), ("run", 1, True), ("got", 1, 10),
                     ("run", 2, True)]


def _cgroup(tmp_path, membership, files):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "self-cgroup").write_text(membership)
    return cpus.cgroup_cpu_limit(str(tmp_path), str(tmp_path / "self-cgroup"))


@pytest.mark.parametrize("membership, files, limit", [
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),  # docker --cpus=1.5: rounded up
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "400000 100000\n",
                                "cpu.max": "max 100000\n"}, 4),  # the process's own cgroup
    ("0::/\n", {"cpu.max": "20000 100000\n"}, 1),  # a fifth of a CPU is still one
    ("4:cpu,cpuacct:/job7\n", {"cpu,cpuacct/job7/cpu.cfs_quota_us": "300000\n",
                               "cpu,cpuacct/job7/cpu.cfs_period_us": "100000\n"}, 3),  # v1
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ("0::/\n", {"cpu.max": "garbage\n"}, None),
    ("", {}, None),  # no cgroup files at all (macOS, a bare chroot)
])
def test_cgroup_cpu_quota_is_read_from_v2_and_v1_files(tmp_path, membership, files, limit):
    assert _cgroup(tmp_path, membership, files) == limit


def test_a_cpu_quota_caps_the_cpus_that_streams_are_made_for(monkeypatch):
    """A container limited to one CPU runs one stream, whatever the host's core count."""
    cpus.usable_cpus.cache_clear()  # read once per process: read again here
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda *a: 1)
    try:
        assert cpus.usable_cpus() == 1
        assert pipeline.cpu_streams(cpus.usable_cpus()) == (1, 1)
        cpus.usable_cpus.cache_clear()
        monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda *a: None)
        assert cpus.usable_cpus() == len(__import__("os").sched_getaffinity(0))
    finally:
        cpus.usable_cpus.cache_clear()
